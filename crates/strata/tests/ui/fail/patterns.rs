use strata::{Cache, cached};

#[cached]
async fn tuple(cache: &Cache, (a, b): (u32, u32)) -> strata::Result<u32> {
    Ok(a + b)
}

#[cached]
async fn wildcard(_: &Cache, id: u32) -> strata::Result<u32> {
    Ok(id)
}

fn main() {}
