use strata::{Cache, cached};

#[cached]
fn load(cache: &Cache, id: u64) -> strata::Result<u64> {
    Ok(id)
}

fn main() {}
