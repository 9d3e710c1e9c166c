//! Which master serves a key: the masters of a cluster and their hash slots, read from
//! `CLUSTER NODES`, and a table from slot to a connection of ours. Two sets of per-master
//! connections use it: the tracking connections ([`crate::invalidation`]) and L2's own data
//! connections ([`crate::l2`]).

use crate::breaker::redis_slot;

/// Hash slot ranges to one connection (or anything else) per master.
pub(crate) struct Routes<R> {
    /// (first slot, last slot, index in `nodes`), sorted; empty with one node for every key.
    ranges: Vec<(u16, u16, usize)>,
    nodes: Vec<R>,
}

impl<R> Default for Routes<R> {
    fn default() -> Self {
        Self { ranges: Vec::new(), nodes: Vec::new() }
    }
}

impl<R> Routes<R> {
    /// The table of `masters` (url, slots as `CLUSTER NODES` lists them), each master's node
    /// given by `node`; a master without one serves none of its slots here.
    pub(crate) fn of_masters(masters: &[(String, String)], mut node: impl FnMut(&str) -> Option<R>) -> Self {
        let mut routes = Self::default();
        for (addr, slots) in masters {
            let Some(n) = node(addr) else { continue };
            let index = routes.nodes.len();
            routes.nodes.push(n);
            if let Some(ranges) = slot_ranges(slots) {
                routes.ranges.extend(ranges.into_iter().map(|(first, last)| (first, last, index)));
            }
        }
        routes.ranges.sort_unstable();
        routes
    }
}

impl<R: Clone> Routes<R> {
    /// The node of `key`'s slot, if one is known.
    pub(crate) fn find(&self, key: &[u8]) -> Option<R> {
        if self.ranges.is_empty() {
            return match self.nodes.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            };
        }
        let slot = redis_slot(key);
        let i = self.ranges.partition_point(|&(_, last, _)| last < slot);
        let &(first, _, node) = self.ranges.get(i)?;
        (first <= slot).then(|| self.nodes[node].clone())
    }
}

/// Slot ranges from `CLUSTER NODES`' slot fields (`0-5460`, `5461`); `None` for an empty list.
fn slot_ranges(slots: &str) -> Option<Vec<(u16, u16)>> {
    let ranges: Vec<(u16, u16)> = slots
        .split_whitespace()
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|s| (s, s)),
        })
        .collect();
    (!ranges.is_empty()).then_some(ranges)
}

/// Masters that own slots, from `CLUSTER NODES` output, as (url, slots), sorted. Failed or
/// address-less nodes are left out; a suspected (`fail?`) one stays, so its loss keeps L1 off until failover.
#[cfg(feature = "cluster")]
pub(crate) fn parse_masters(text: &str, scheme: &str) -> Vec<(String, String)> {
    let mut masters: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (fields.get(1)?, fields.get(2)?.split(',').collect::<Vec<_>>());
            if !flags.contains(&"master") || flags.iter().any(|f| matches!(*f, "fail" | "noaddr" | "handshake")) {
                return None;
            }
            let host_port = addr.split(['@', ',']).next()?;
            // Migration markers (`[slot->-id]`) appear only in a node's view of itself: leave
            // them out so that asking another node does not look like a topology change. The
            // move itself shows when the slot changes owner.
            let slots: Vec<&str> =
                fields.get(8..).unwrap_or_default().iter().filter(|s| !s.starts_with('[')).copied().collect();
            // A master without slots holds no keys (a node joining, or a replica not yet
            // attached in this node's view); it is tracked once slots move to it, or as soon
            // as a redirect names it (keys migrating to it, see `invalidation::redirected`).
            if slots.is_empty() {
                return None;
            }
            // An IPv6 address goes in brackets in a URL.
            let url = match host_port.rsplit_once(':') {
                Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
                    format!("{scheme}://[{host}]:{port}")
                }
                _ => format!("{scheme}://{host_port}"),
            };
            Some((url, slots.join(" ")))
        })
        .collect();
    masters.sort();
    masters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cluster")]
    #[test]
    fn masters_are_parsed_from_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002,host master - 0 0 2 connected 5461-10922 [5000->-a1]
c3 127.0.0.1:7003@17003 slave b2 0 0 2 connected
d4 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected 10923-16383
e5 :0@0 master,noaddr - 0 0 0 disconnected
f6 127.0.0.1:7006@17006 master - 0 0 0 connected
g7 2001:db8::7:7007@17007 master - 0 0 4 connected 10923-16383";
        assert_eq!(
            parse_masters(text, "redis"),
            vec![
                ("redis://127.0.0.1:7001".to_string(), "0-5460".to_string()),
                ("redis://127.0.0.1:7002".to_string(), "5461-10922".to_string()),
                ("redis://[2001:db8::7]:7007".to_string(), "10923-16383".to_string()),
            ]
        );
    }

    #[test]
    fn keys_find_the_connection_of_their_slot() {
        assert_eq!(slot_ranges("0-5460 5461 5462-10922"), Some(vec![(0, 5460), (5461, 5461), (5462, 10922)]));
        assert_eq!(slot_ranges(""), None);
        // A standalone server (or a Sentinel's master): no slots listed.
        let single = Routes::of_masters(&[("only".to_owned(), String::new())], |url| Some(url.to_owned()));
        assert_eq!(single.find(b"any").as_deref(), Some("only"), "standalone: one connection for every key");
        assert_eq!(Routes::<&str>::default().find(b"any"), None, "no connection yet");
        let key_at = |wanted: std::ops::RangeInclusive<u16>| {
            (0..).map(|i| format!("k{i}")).find(|k| wanted.contains(&redis_slot(k.as_bytes()))).expect("a key")
        };
        // Two masters, and slots 12000-16383 served by none (a master just failed).
        let masters = [
            ("a".to_owned(), "0-5460".to_owned()),
            ("b".to_owned(), "5461 5462-11999".to_owned()),
            ("c".to_owned(), "12000-16383".to_owned()),
        ];
        let cluster = Routes::of_masters(&masters, |addr| (addr != "c").then(|| addr.to_owned()));
        assert_eq!(cluster.find(key_at(0..=5460).as_bytes()).as_deref(), Some("a"));
        assert_eq!(cluster.find(key_at(5461..=5461).as_bytes()).as_deref(), Some("b"));
        assert_eq!(cluster.find(key_at(5462..=11999).as_bytes()).as_deref(), Some("b"));
        assert_eq!(cluster.find(key_at(12000..=16383).as_bytes()), None, "a master without a connection");
        assert_eq!(cluster.find(b"{k}:x"), cluster.find(b"k"), "hash tags pick the slot");
    }
}
