use strata::{Cache, cached};

#[cached(namespace = "user", ttl_secs = 60)]
async fn unknown(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(ttl = "forever")]
async fn bad_ttl(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(ttl = "0s", namespace = "user:profile")]
async fn bad_values(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(namespace = "a", namespace = "b")]
async fn twice(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(args = [id], key = "{id}", schema = SCHEMA, app = "shop")]
async fn exclusive(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(app = "my shop")]
async fn bad_app(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(version = -1)]
async fn bad_version(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(namespace = user, args = id)]
async fn wrong_forms(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

#[cached(ttl)]
async fn no_value(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

fn main() {}
