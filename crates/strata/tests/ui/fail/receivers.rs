use strata::{Cache, cached};

pub struct Service {
    cache: Cache,
}

impl Service {
    #[cached(cache = self.cache)]
    async fn mutates(&mut self, id: u64) -> strata::Result<u64> {
        Ok(id)
    }

    #[cached(cache = self.cache)]
    async fn consumes(self, id: u64) -> strata::Result<u64> {
        Ok(id)
    }

    #[cached]
    async fn no_cache(&self, id: u64) -> strata::Result<u64> {
        Ok(id)
    }
}

fn main() {}
