use strata::{Cache, cached};

#[cached]
async fn generic_value<T: Default + Clone>(cache: &Cache, id: u64) -> strata::Result<T> {
    Ok(T::default())
}

#[cached]
async fn opaque(cache: &Cache, id: u64) -> strata::Result<impl Clone> {
    Ok(id)
}

fn main() {}
