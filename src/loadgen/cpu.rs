//! CPU time of the processes serving a run, over exactly the run: from the
//! first publish to the last result, so setting up users and coupons before
//! and the verdict's audit after are not counted (`--cpu LABEL=WHO`).
//!
//! Each process's own user + system time, read from `/proc` (Linux); the
//! load generator counts itself as `load generator`.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

/// Which processes a label stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// These process ids.
    Pids(Vec<i32>),
    /// Every process of this name (e.g. `postgres`: the backends serving the
    /// workers come and go with their pools).
    Named(String),
}

/// `LABEL=WHO`: WHO is a comma-separated list of process ids or a process name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub label: String,
    pub who: Who,
}

impl FromStr for Watched {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (label, who) = s
            .split_once('=')
            .filter(|(l, w)| !l.is_empty() && !w.is_empty())
            .ok_or_else(|| format!("{s:?} is not LABEL=PIDS or LABEL=NAME"))?;
        let pids: Result<Vec<i32>, _> = who.split(',').map(str::parse::<i32>).collect();
        let who = match pids {
            Ok(pids) => Who::Pids(pids),
            Err(_) if who.contains(',') => {
                return Err(format!(
                    "{who:?} is neither process ids nor one process name"
                ))
            }
            Err(_) => Who::Named(who.to_owned()),
        };
        Ok(Self {
            label: label.to_owned(),
            who,
        })
    }
}

/// The label the load generator's own CPU time is reported under.
pub const SELF_LABEL: &str = "load generator";

/// CPU ticks per process, per label, at one moment.
#[derive(Debug, Default)]
pub struct Sample(BTreeMap<String, HashMap<i32, u64>>);

fn ticks(stat: &procfs::process::Stat) -> u64 {
    stat.utime + stat.stime
}

impl Sample {
    pub fn take(watched: &[Watched]) -> Self {
        let mut sample = BTreeMap::new();
        let named: Vec<&str> = watched
            .iter()
            .filter_map(|w| match &w.who {
                Who::Named(name) => Some(name.as_str()),
                Who::Pids(_) => None,
            })
            .collect();
        let mut by_name: HashMap<String, HashMap<i32, u64>> = HashMap::new();
        if !named.is_empty() {
            for stat in procfs::process::all_processes()
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|p| p.stat().ok())
                .filter(|s| named.contains(&s.comm.as_str()))
            {
                by_name
                    .entry(stat.comm.clone())
                    .or_default()
                    .insert(stat.pid, ticks(&stat));
            }
        }
        for w in watched {
            let pids = match &w.who {
                Who::Named(name) => by_name.get(name).cloned().unwrap_or_default(),
                Who::Pids(pids) => pids
                    .iter()
                    .filter_map(|&pid| procfs::process::Process::new(pid).ok()?.stat().ok())
                    .map(|s| (s.pid, ticks(&s)))
                    .collect(),
            };
            sample.insert(w.label.clone(), pids);
        }
        if let Ok(me) = procfs::process::Process::myself().and_then(|p| p.stat()) {
            sample.insert(SELF_LABEL.to_owned(), HashMap::from([(me.pid, ticks(&me))]));
        }
        Self(sample)
    }

    /// µs of CPU per request between `self` and `later`, per label: a
    /// process that started in between counts from zero, one that ended is
    /// not counted.
    pub fn per_request(&self, later: &Sample, requests: usize) -> BTreeMap<String, f64> {
        let tick_us = 1e6 / procfs::ticks_per_second() as f64;
        later
            .0
            .iter()
            .map(|(label, now)| {
                let before = self.0.get(label);
                let used: u64 = now
                    .iter()
                    .map(|(pid, t)| {
                        t.saturating_sub(*before.and_then(|b| b.get(pid)).unwrap_or(&0))
                    })
                    .sum();
                (
                    label.clone(),
                    used as f64 * tick_us / requests.max(1) as f64,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_pids_or_a_process_name() {
        assert_eq!(
            "worker=12,13".parse::<Watched>().unwrap(),
            Watched {
                label: "worker".into(),
                who: Who::Pids(vec![12, 13])
            }
        );
        assert_eq!(
            "PostgreSQL=postgres".parse::<Watched>().unwrap().who,
            Who::Named("postgres".into())
        );
        assert!("worker".parse::<Watched>().is_err());
        assert!("=12".parse::<Watched>().is_err());
        assert!("w=12,postgres".parse::<Watched>().is_err());
    }

    #[test]
    fn cpu_spent_in_between_is_counted_per_request() {
        let me = std::process::id() as i32;
        let watched = vec![Watched {
            label: "me".into(),
            who: Who::Pids(vec![me]),
        }];
        let before = Sample::take(&watched);
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let per = before.per_request(&Sample::take(&watched), 1000);
        // 200 ms of spinning over 1000 requests is about 200 µs each.
        assert!(per["me"] > 100.0, "{per:?}");
        assert!(per[SELF_LABEL] >= per["me"] * 0.9, "{per:?}");
    }
}
