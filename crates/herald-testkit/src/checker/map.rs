//! The replicated-map check of a soak run ([`check_map`]): writers record every put and
//! delete they attempted (with its revision when it was acknowledged), watchers their final
//! map; given the map's final snapshot, the checker verifies that
//! - **nothing acknowledged is lost**: for every key, the snapshot holds the key's last
//!   acknowledged write (by revision) or a later one;
//! - **nothing is invented**: every value in the snapshot was written by some attempt (an
//!   unacknowledged attempt may have been applied);
//! - **watchers converge**: every watcher's final map equals the snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Epoch;

/// A map revision: (epoch, offset), ordered as positions are within one epoch.
pub type MapRevision = (Epoch, u64);

/// One attempted put (`value: Some`) or delete (`None`); `revision` is set when the write
/// was acknowledged (else its outcome is unknown: it may or may not have been applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapWrite {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub revision: Option<MapRevision>,
}

/// A watcher's final map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapWatcherFinal {
    pub name: String,
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// What [`check_map`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapReport {
    pub keys: usize,
    pub acknowledged: usize,
    pub unacknowledged: usize,
    pub watchers: usize,
    /// One line per violation.
    pub problems: Vec<String>,
}

impl MapReport {
    pub fn violations(&self) -> usize {
        self.problems.len()
    }

    /// A short human-readable summary.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "map: {} keys in the final snapshot, writes acknowledged {}, unacknowledged {}, {} watchers, violations {}",
            self.keys,
            self.acknowledged,
            self.unacknowledged,
            self.watchers,
            self.violations()
        );
        for p in self.problems.iter().take(20) {
            let _ = writeln!(t, "  map violation: {p}");
        }
        t
    }
}

/// Checks a map's final `snapshot` (key → (value, revision)) against the `writes` and each
/// watcher's final map; see the module docs.
pub fn check_map(
    snapshot: &BTreeMap<String, (Vec<u8>, MapRevision)>,
    writes: &[MapWrite],
    watchers: &[MapWatcherFinal],
) -> MapReport {
    let mut r = MapReport {
        keys: snapshot.len(),
        acknowledged: writes.iter().filter(|w| w.revision.is_some()).count(),
        unacknowledged: writes.iter().filter(|w| w.revision.is_none()).count(),
        watchers: watchers.len(),
        problems: Vec::new(),
    };
    let mut by_key: BTreeMap<&str, Vec<&MapWrite>> = BTreeMap::new();
    for w in writes {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    for (key, ws) in &by_key {
        let last = ws
            .iter()
            .filter_map(|w| w.revision.map(|rev| (rev, *w)))
            .max_by_key(|(rev, _)| *rev);
        match (snapshot.get(*key), last) {
            (Some((value, rev)), last) => {
                if let Some((lrev, lw)) = last {
                    if *rev < lrev {
                        r.problems.push(format!(
                            "{key}: the snapshot holds revision {rev:?}, older than the acknowledged write at {lrev:?}"
                        ));
                    } else if *rev == lrev && lw.value.as_deref() != Some(value.as_slice()) {
                        r.problems.push(format!(
                            "{key}: the snapshot's value at {rev:?} is not the one acknowledged there"
                        ));
                    }
                }
                let written = ws.iter().any(|w| {
                    w.value.as_deref() == Some(value.as_slice())
                        && w.revision.is_none_or(|wr| wr == *rev)
                });
                if !written {
                    r.problems.push(format!(
                        "{key}: the snapshot holds a value no write wrote at {rev:?}"
                    ));
                }
            }
            (None, Some((lrev, lw))) if lw.value.is_some() => {
                let deleted_later = ws
                    .iter()
                    .any(|w| w.value.is_none() && w.revision.is_none_or(|wr| wr > lrev));
                if !deleted_later {
                    r.problems.push(format!(
                        "{key}: missing from the snapshot, though a put at {lrev:?} was acknowledged and no later delete attempted"
                    ));
                }
            }
            (None, _) => {}
        }
    }
    for key in snapshot.keys() {
        if !by_key.contains_key(key.as_str()) {
            r.problems
                .push(format!("{key}: in the snapshot but never written"));
        }
    }
    let want: BTreeMap<&String, &Vec<u8>> = snapshot.iter().map(|(k, (v, _))| (k, v)).collect();
    for w in watchers {
        let have: BTreeMap<&String, &Vec<u8>> = w.entries.iter().collect();
        if have != want {
            let differ: Vec<&String> = want
                .keys()
                .chain(have.keys())
                .filter(|k| want.get(*k) != have.get(*k))
                .take(10)
                .copied()
                .collect();
            r.problems.push(format!(
                "watcher {} did not converge to the final snapshot; keys that differ: {differ:?}",
                w.name
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, rev: Option<u64>) -> MapWrite {
        MapWrite {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            revision: rev.map(|o| (7, o)),
        }
    }

    fn del(key: &str, rev: Option<u64>) -> MapWrite {
        MapWrite {
            key: key.into(),
            value: None,
            revision: rev.map(|o| (7, o)),
        }
    }

    fn snap(entries: &[(&str, &str, u64)]) -> BTreeMap<String, (Vec<u8>, MapRevision)> {
        entries
            .iter()
            .map(|(k, v, o)| (k.to_string(), (v.as_bytes().to_vec(), (7, *o))))
            .collect()
    }

    fn watcher(name: &str, entries: &[(&str, &str)]) -> MapWatcherFinal {
        MapWatcherFinal {
            name: name.into(),
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn map_checker_accepts_a_correct_run() {
        let writes = [
            put("a", "1", Some(1)),
            put("b", "1", Some(2)),
            put("a", "2", Some(3)),
            del("b", Some(4)),
            // Unacknowledged, but applied: allowed.
            put("c", "x", None),
            // Unacknowledged, not applied: allowed.
            put("a", "never", None),
        ];
        let s = snap(&[("a", "2", 3), ("c", "x", 5)]);
        let ws = [
            watcher("w1", &[("a", "2"), ("c", "x")]),
            watcher("w2", &[("a", "2"), ("c", "x")]),
        ];
        let r = check_map(&s, &writes, &ws);
        assert_eq!(r.violations(), 0, "{r:?}");
        assert_eq!((r.keys, r.acknowledged, r.unacknowledged), (2, 4, 2));
    }

    #[test]
    fn map_checker_flags_lost_invented_and_diverged_state() {
        let writes = [
            put("a", "1", Some(1)),
            put("a", "2", Some(3)),
            put("b", "1", Some(2)),
        ];
        let ok = [watcher("w", &[("a", "2"), ("b", "1")])];
        // The acknowledged put a=2 at 3 is lost: the snapshot holds the older one.
        let r = check_map(&snap(&[("a", "1", 1), ("b", "1", 2)]), &writes, &[]);
        assert_eq!(r.violations(), 1, "{r:?}");
        // b vanished without any delete.
        let r = check_map(&snap(&[("a", "2", 3)]), &writes, &[]);
        assert_eq!(r.violations(), 1, "{r:?}");
        // A value nobody wrote, and a key nobody wrote.
        let r = check_map(
            &snap(&[("a", "9", 4), ("b", "1", 2), ("z", "1", 5)]),
            &writes,
            &[],
        );
        assert_eq!(r.violations(), 2, "{r:?}");
        // A different value at the acknowledged revision.
        let r = check_map(&snap(&[("a", "1", 3), ("b", "1", 2)]), &writes, &[]);
        assert!(r.violations() >= 1, "{r:?}");
        // A watcher that did not converge.
        let good = snap(&[("a", "2", 3), ("b", "1", 2)]);
        assert_eq!(check_map(&good, &writes, &ok).violations(), 0);
        let r = check_map(
            &good,
            &writes,
            &[watcher("stale", &[("a", "1"), ("b", "1")])],
        );
        assert_eq!(r.violations(), 1, "{r:?}");
        assert!(r.table().contains("stale"));
    }
}
