//! The SQL layer alone (SQLite): what the benchmark's "direct" path runs.

use strata_example::ErrorKind;
use strata_example::db::{Backend, Db, UserUpdate};

use crate::common::TestResult;

#[tokio::test]
async fn the_sqlite_layer_reads_writes_and_counts_its_queries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = Db::open(&format!("sqlite://{}", dir.path().join("db.sqlite3").display())).await?;
    assert_eq!(db.backend(), Backend::Sqlite);
    db.seed_users(1_000).await?;
    db.seed_users(1_000).await?; // idempotent
    db.seed_products(30, 3).await?;
    assert_eq!(db.queries(), 3);

    let user = db.get_user(1_000).await?.expect("seeded");
    assert_eq!((user.name.as_str(), user.email.as_str()), ("user-1000", "user1000@example.com"));
    assert!(user.bio.len() > 200, "profiles have a realistic size");
    assert_eq!(db.get_user(1_001).await?, None);

    let update = UserUpdate { email: Some("ada@example.com".into()), ..UserUpdate::default() };
    let (updated, version) = db.update_user(1_000, &update).await?.expect("exists");
    assert_eq!((updated.name.as_str(), updated.email.as_str()), ("user-1000", "ada@example.com"));
    assert_eq!(db.get_user(1_000).await?, Some(updated));
    assert_eq!(version, 2, "every update raises the row's version");
    assert_eq!(db.update_user(1_000, &update).await?.map(|(_, v)| v), Some(3));
    assert_eq!(db.update_user(5_000, &update).await?, None);

    let listing = db.list_products("cat-0").await?;
    assert_eq!(listing.iter().map(|p| p.id).collect::<Vec<_>>(), [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]);
    assert_eq!(db.reprice_category("cat-0", -100).await?, 10);
    assert!(db.list_products("cat-0").await?.iter().all(|p| p.price_cents == 0));
    assert_eq!(db.reprice_category("cat-0", -101).await.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    assert_eq!(db.get_product(4).await?.map(|p| p.category), Some("cat-1".to_owned()));
    assert_eq!(db.queries(), 13, "rejected calls do not reach the database");

    // A second handle on the same file sees the writes.
    let again = Db::open(&format!("sqlite:{}", dir.path().join("db.sqlite3").display())).await?;
    assert_eq!(again.get_user(1_000).await?.map(|u| u.email), Some("ada@example.com".to_owned()));
    Ok(())
}

#[tokio::test]
async fn an_in_memory_database_and_bad_urls() -> TestResult {
    let db = Db::open("sqlite::memory:").await?;
    db.seed_users(10).await?;
    assert!(db.get_user(10).await?.is_some());
    assert_eq!(Db::open("sqlite:").await.map(drop).map_err(|e| e.kind()), Err(ErrorKind::Config));
    let unreachable = Db::open("postgres://nobody@127.0.0.1:1/none").await;
    assert_eq!(unreachable.map(drop).map_err(|e| e.kind()), Err(ErrorKind::Database));
    Ok(())
}

/// The time spent in updates is summed per call, the added latency included, and nothing else
/// adds to it: what the benchmark subtracts from a write's time to get the cache's share.
#[tokio::test]
async fn update_time_counts_updates_only() -> TestResult {
    let db = Db::open("sqlite::memory:").await?;
    db.seed_users(10).await?;
    assert_eq!(db.update_time(), std::time::Duration::ZERO);
    db.set_extra_latency(std::time::Duration::from_millis(20));
    db.get_user(1).await?;
    assert_eq!(db.update_time(), std::time::Duration::ZERO, "reads do not count");
    let update = UserUpdate { name: Some("x".into()), ..UserUpdate::default() };
    db.update_user(1, &update).await?;
    db.update_user(2, &update).await?;
    assert!(db.update_time() >= std::time::Duration::from_millis(40), "{:?}", db.update_time());
    Ok(())
}

/// A database file made before `users.version` existed gets the column when opened: updates
/// work and start counting from version 1.
#[tokio::test]
async fn a_database_made_before_row_versions_gets_the_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.sqlite3");
    {
        let old = rusqlite::Connection::open(&path)?;
        old.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, bio TEXT NOT NULL);
             INSERT INTO users VALUES (1, 'user-1', 'user1@example.com', 'bio');",
        )?;
    }
    let db = Db::open(&format!("sqlite:{}", path.display())).await?;
    let update = UserUpdate { name: Some("Ada".into()), ..UserUpdate::default() };
    let (user, version) = db.update_user(1, &update).await?.expect("exists");
    assert_eq!((user.name.as_str(), version), ("Ada", 2));
    // Opening it again changes nothing.
    let again = Db::open(&format!("sqlite:{}", path.display())).await?;
    assert_eq!(again.update_user(1, &update).await?.map(|(_, v)| v), Some(3));
    Ok(())
}
