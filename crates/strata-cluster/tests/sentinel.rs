//! Sentinel setups against real processes.

mod common;

use std::time::{Duration, Instant};

use common::pid_exists;
use strata_cluster::{NodeKind, SentinelSetup};

fn sentinel_master_addr(url: &str, name: &str) -> String {
    let client = redis::Client::open(url).expect("client");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect to sentinel");
    let (ip, port): (String, String) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query(&mut con)
        .expect("GET-MASTER-ADDR-BY-NAME");
    format!("{ip}:{port}")
}

#[test]
fn sentinels_report_the_master_and_its_replicas() {
    let t = Instant::now();
    let mut setup = SentinelSetup::start(2, 3, "cache-master").expect("start sentinel setup");
    eprintln!("sentinel setup (1 master, 2 replicas, 3 sentinels): {:?}", t.elapsed());
    assert_eq!(setup.master_name(), "cache-master");
    assert_eq!(setup.replicas().len(), 2);
    assert_eq!(setup.sentinels().len(), 3);
    assert!(setup.sentinels().iter().all(|s| s.kind() == NodeKind::Sentinel));
    let master_addr = setup.master().addr();
    let urls = setup.sentinel_urls();
    assert_eq!(urls.len(), 3);
    for url in &urls {
        assert!(url.starts_with("redis://127.0.0.1:"), "{url}");
        assert_eq!(sentinel_master_addr(url, "cache-master"), master_addr);
    }
    assert_eq!(setup.master_addr().expect("master addr"), master_addr);
    assert_eq!(setup.current_master().expect("current master"), 0);

    // Sentinels know both replicas.
    let mut con = setup.sentinels()[0].connection().expect("connect");
    let replicas: Vec<redis::Value> =
        redis::cmd("SENTINEL").arg("REPLICAS").arg("cache-master").query(&mut con).expect("SENTINEL REPLICAS");
    assert_eq!(replicas.len(), 2);

    // Replication works: a write on the master shows up on a replica.
    let mut m = setup.master().connection().expect("master");
    let () = redis::cmd("SET").arg("k").arg("v").query(&mut m).expect("SET");
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(2000).query(&mut m).expect("WAIT");
    assert_eq!(acked, 2);
    let mut r = setup.replicas()[0].connection().expect("replica");
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut r).expect("GET");
    assert_eq!(v.as_deref(), Some("v"));

    let pids: Vec<u32> = setup.data_nodes().iter().chain(setup.sentinels()).filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 6);
    drop(setup);
    assert!(pids.iter().all(|&p| !pid_exists(p)), "no orphans after drop");
}

#[test]
fn sentinels_fail_over_when_the_master_dies() {
    let mut setup = SentinelSetup::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(1000)
        .failover_timeout_ms(5000)
        .password("sentinel-pw")
        .start()
        .expect("start sentinel setup");
    assert!(setup.master().url().starts_with("redis://default:sentinel-pw@"));
    let t = Instant::now();
    setup.master().kill().expect("kill master");
    let new_master = setup.wait_for_master(Some(0), Duration::from_secs(30)).expect("failover");
    eprintln!("sentinel: master kill -> new master agreed: {:?}", t.elapsed());
    assert!(new_master >= 1);
    assert_eq!(setup.current_master().expect("current"), new_master);
}
