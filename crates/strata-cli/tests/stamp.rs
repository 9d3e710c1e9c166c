//! The real `strata` binary: `invalidate --stamp` and `--tag` raise one stamp key (the library's
//! format) with one command and leave every key in place.

use std::process::{Command, Output};

use serde_json::Value;
use strata_cluster::RedisServer;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_LOG")
        .env_remove("STRATA_REDIS_USER")
        .env_remove("STRATA_REDIS_PASSWORD")
        .output()
        .expect("run strata")
}

fn json(args: &[&str]) -> Value {
    let out = strata(args);
    assert_eq!(out.status.code(), Some(0), "strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn stamp_invalidation_raises_one_key_and_removes_nothing() {
    let server = RedisServer::start().expect("server");
    let mut con = server.connection().expect("connection");
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("shop:v1:user:{i}")).arg("x").arg("EX").arg(30).ignore();
    }
    pipe.exec(&mut con).expect("seed");
    let url = server.url();

    let first = json(&["invalidate", "--url", &url, "--namespace", "shop:v1:user", "--stamp", "--json"]);
    assert_eq!(first["stamp_key"], "{shop:v1:user}:stamp");
    let generation = first["generation"].as_u64().expect("generation");
    let stored: u64 = redis::cmd("GET").arg("{shop:v1:user}:stamp").query(&mut con).expect("GET stamp");
    assert_eq!(stored, generation);
    let again = json(&["invalidate", "--url", &url, "--namespace", "shop:v1:user", "--stamp", "--json"]);
    assert!(again["generation"].as_u64().expect("generation") > generation, "a stamp only grows");
    let size: u64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size, 51, "every key stays (they are misses for Strata readers), plus the stamp");

    let tag = json(&["invalidate", "--url", &url, "--tag", "shop:tenant-7", "--json"]);
    assert_eq!(tag["stamp_key"], "{shop:tag:tenant-7}:stamp");
    let human = strata(&["invalidate", "--url", &url, "--tag", "shop:tenant-7"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("{shop:tag:tenant-7}:stamp raised to"));

    for bad in [["--tag", "tenant-7"], ["--tag", "shop:a*b"]] {
        let out = strata(&["invalidate", "--url", &url, bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
    }
    let out = strata(&["invalidate", "--url", &url, "--namespace", "shop:v1", "--stamp"]);
    assert_eq!(out.status.code(), Some(1), "not a namespace");
    let out = strata(&["invalidate", "--url", &url, "--pattern", "shop:*", "--stamp"]);
    assert_eq!(out.status.code(), Some(1), "--stamp needs --namespace");
    let keys: u64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(keys, 52, "nothing was removed by the refused command");
}
