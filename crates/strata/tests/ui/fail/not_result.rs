use strata::{Cache, cached};

#[cached]
async fn load(cache: &Cache, id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
