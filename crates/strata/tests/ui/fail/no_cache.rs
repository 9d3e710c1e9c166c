use strata::cached;

#[cached(namespace = "user")]
async fn load(id: u64) -> strata::Result<u64> {
    Ok(id)
}

fn main() {}
