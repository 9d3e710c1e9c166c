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

// Serde but not `Clone` (a type that is not serde gets the same message, with rustc's list of
// the types that are, which changes with the dependency graph).
#[derive(serde::Serialize, serde::Deserialize)]
struct NotClone;

#[cached]
async fn not_a_cache_value(cache: &Cache, id: u64) -> strata::Result<NotClone> {
    Ok(NotClone)
}

fn main() {}
