use strata::{Cache, cached};

#[cached]
async fn load(cache: &Cache, id: u64) {
    let _ = id;
}

fn main() {}
