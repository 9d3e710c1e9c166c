//! Products and per-category listings, invalidated together by namespace.

use strata::{Cache, KeySchema, Ttl};

use crate::db::{Db, Product};
use crate::error::Result;

/// Products through Strata. Items (`{app}:v1:product:ID`) and listings
/// (`{app}:v1:product:list:CATEGORY`) share the `{app}:v1:product` namespace, so a bulk update
/// invalidates all of them with one Redis command ([`Cache::invalidate_namespace`]): a repriced
/// product may appear in any cached listing or item, and enumerating those keys would cost a
/// scan.
#[derive(Debug, Clone)]
pub struct Products {
    db: Db,
    cache: Cache,
    schema: KeySchema,
}

impl Products {
    /// Products of `db` cached in `cache` under `schema`. [`Services`](super::Services) builds one.
    pub fn new(db: Db, cache: Cache, schema: KeySchema) -> Self {
        Self { db, cache, schema }
    }

    /// The namespace of every product key.
    pub fn namespace(&self) -> Result<String> {
        Ok(self.schema.namespace("product")?)
    }

    /// One product (a missing one is cached as "not found").
    pub async fn get(&self, id: i64) -> Result<Option<Product>> {
        let key = self.schema.key("product", &id.to_string())?;
        let db = self.db.clone();
        Ok(self.cache.get_or_set_optional(&key, Ttl::Medium, || async move { db.get_product(id).await }).await?)
    }

    /// The listing of a category (an unknown category is an empty listing, cached as such).
    pub async fn list(&self, category: &str) -> Result<Vec<Product>> {
        // The variant validates the category (no whitespace, glob characters, ':' or braces).
        let key = self.schema.key_with_variant("product", "list", category)?;
        let (db, category) = (self.db.clone(), category.to_owned());
        Ok(self.cache.get_or_set(&key, Ttl::Short, || async move { db.list_products(&category).await }).await?)
    }

    /// Reprices a category in the database (one statement), then invalidates the namespace
    /// (one Redis command). Returns how many products changed.
    ///
    /// An invalidation that fails is an error even though the database changed: the caller
    /// learns that listings may stay stale until their TTL (a retry would reprice again).
    pub async fn reprice(&self, category: &str, percent: i64) -> Result<u64> {
        // Validate the category as a key segment first: nothing is written for a bad one.
        self.schema.key_with_variant("product", "list", category)?;
        let changed = self.db.reprice_category(category, percent).await?;
        self.cache.invalidate_namespace(&self.namespace()?).await?;
        Ok(changed)
    }
}
