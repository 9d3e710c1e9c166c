use strata::{Cache, cached};

#[derive(Debug)]
struct NoConversion;

impl std::fmt::Display for NoConversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no conversion")
    }
}

#[cached]
async fn error_without_from(cache: &Cache, id: u64) -> Result<u64, NoConversion> {
    Ok(id)
}

#[cached]
async fn not_display(cache: &Cache, ids: Vec<u64>) -> strata::Result<usize> {
    Ok(ids.len())
}

#[derive(Clone)]
struct NotSerde;

#[cached]
async fn not_a_cache_value(cache: &Cache, id: u64) -> strata::Result<NotSerde> {
    Ok(NotSerde)
}

fn main() {}
