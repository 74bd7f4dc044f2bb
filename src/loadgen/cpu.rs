//! CPU time of the processes serving a run, over exactly the run: from the
//! first publish to the last result, so setting up users and coupons before
//! and the verdict's audit after are not counted (`--cpu LABEL=WHO`).
//!
//! Each process's own user + system time, read from `/proc` (Linux); the
//! load generator counts itself as `load generator`. Over the run's
//! quarter seconds ([`Slices`]) the same, in cores, next to the whole
//! machine's (`/proc/stat`).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use procfs::{Current, CurrentSI};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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

/// CPU use per process, per label, at one moment, and the machine's.
#[derive(Debug, Default)]
pub struct Sample {
    per_label: BTreeMap<String, HashMap<i32, Use>>,
    machine: Option<Machine>,
}

/// One process's CPU so far: clock ticks it ran (user + system), and the
/// time its threads were ready to run but waited for a core (the
/// scheduler's run queue, `/proc/<pid>/task/*/schedstat`).
#[derive(Debug, Default, Clone, Copy)]
struct Use {
    ticks: u64,
    waited_ns: u64,
}

impl Use {
    fn of(process: &procfs::process::Process, stat: &procfs::process::Stat) -> Self {
        let waited_ns = process
            .tasks()
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| t.schedstat().ok())
                    .map(|s| s.run_delay)
                    .sum()
            })
            .unwrap_or(0);
        Self {
            ticks: stat.utime + stat.stime,
            waited_ns,
        }
    }

    /// What `self` (later) added to `before` (zero for a process that
    /// started in between).
    fn since(&self, before: Option<&Use>) -> Use {
        let before = before.copied().unwrap_or_default();
        Use {
            ticks: self.ticks.saturating_sub(before.ticks),
            waited_ns: self.waited_ns.saturating_sub(before.waited_ns),
        }
    }
}

/// The machine's CPU since boot: ticks busy (user, nice, system,
/// interrupts) and taken by the hypervisor for others (steal), over every
/// core (`/proc/stat`); and µs during which some task waited for a core
/// (`/proc/pressure/cpu`, where the kernel keeps it).
#[derive(Debug, Default, Clone, Copy)]
struct Machine {
    busy: u64,
    stolen: u64,
    pressure_us: Option<u64>,
}

impl Machine {
    fn now() -> Option<Self> {
        let t = procfs::KernelStats::current().ok()?.total;
        let busy = t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0);
        Some(Self {
            busy,
            stolen: t.steal.unwrap_or(0),
            pressure_us: procfs::CpuPressure::current().ok().map(|p| p.some.total),
        })
    }
}

/// The CPU one slice of a run took, in cores (1.0: one core busy for the
/// whole slice).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceCpu {
    /// Per label (`--cpu`, and the load generator's own).
    pub cores: BTreeMap<String, f64>,
    /// Per label: how long its threads were ready to run but waited for a
    /// core, per second of the slice (0.5: half a thread's worth of time
    /// spent in the run queue).
    #[serde(default)]
    pub waiting: BTreeMap<String, f64>,
    /// Every process and the kernel (`/proc/stat`).
    pub machine_busy_cores: f64,
    /// Time the hypervisor ran something else instead (`steal`).
    #[serde(default)]
    pub machine_stolen_cores: f64,
    /// Share of the slice during which some task waited for a core
    /// (`/proc/pressure/cpu`, "some"; absent where the kernel has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_cpu_pressure: Option<f64>,
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
        let mut by_name: HashMap<String, HashMap<i32, Use>> = HashMap::new();
        if !named.is_empty() {
            for (process, stat) in procfs::process::all_processes()
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|p| p.stat().ok().map(|s| (p, s)))
                .filter(|(_, s)| named.contains(&s.comm.as_str()))
            {
                by_name
                    .entry(stat.comm.clone())
                    .or_default()
                    .insert(stat.pid, Use::of(&process, &stat));
            }
        }
        let of_pid = |pid: i32| {
            let process = procfs::process::Process::new(pid).ok()?;
            let stat = process.stat().ok()?;
            Some((pid, Use::of(&process, &stat)))
        };
        for w in watched {
            let pids = match &w.who {
                Who::Named(name) => by_name.get(name).cloned().unwrap_or_default(),
                Who::Pids(pids) => pids.iter().filter_map(|&pid| of_pid(pid)).collect(),
            };
            sample.insert(w.label.clone(), pids);
        }
        if let Some(me) = of_pid(std::process::id() as i32) {
            sample.insert(SELF_LABEL.to_owned(), HashMap::from([me]));
        }
        Self {
            per_label: sample,
            machine: Machine::now(),
        }
    }

    /// What each label used between `self` and `later`: a process that
    /// started in between counts from zero, one that ended is not counted.
    fn used<'a>(&'a self, later: &'a Sample) -> impl Iterator<Item = (&'a String, Use)> {
        later.per_label.iter().map(move |(label, now)| {
            let before = self.per_label.get(label);
            let used = now.iter().fold(Use::default(), |sum, (pid, u)| {
                let d = u.since(before.and_then(|b| b.get(pid)));
                Use {
                    ticks: sum.ticks + d.ticks,
                    waited_ns: sum.waited_ns + d.waited_ns,
                }
            });
            (label, used)
        })
    }

    /// µs of CPU per request between `self` and `later`, per label.
    pub fn per_request(&self, later: &Sample, requests: usize) -> BTreeMap<String, f64> {
        let tick_us = 1e6 / procfs::ticks_per_second() as f64;
        self.used(later)
            .map(|(label, used)| {
                (
                    label.clone(),
                    used.ticks as f64 * tick_us / requests.max(1) as f64,
                )
            })
            .collect()
    }

    /// Cores each label, and the machine, kept busy between `self` and
    /// `later`, `secs` apart, and how long each waited for one.
    pub fn cores(&self, later: &Sample, secs: f64) -> SliceCpu {
        let secs = secs.max(1e-3);
        let per_sec = procfs::ticks_per_second() as f64 * secs;
        let machine = self.machine.zip(later.machine);
        let (busy, stolen) = machine.map_or((0, 0), |(a, b)| {
            (
                b.busy.saturating_sub(a.busy),
                b.stolen.saturating_sub(a.stolen),
            )
        });
        let pressure = machine.and_then(|(a, b)| {
            let waited_us = b.pressure_us?.saturating_sub(a.pressure_us?);
            Some(waited_us as f64 / 1e6 / secs)
        });
        let used: Vec<(&String, Use)> = self.used(later).collect();
        SliceCpu {
            cores: used
                .iter()
                .map(|(label, u)| ((*label).clone(), u.ticks as f64 / per_sec))
                .collect(),
            waiting: used
                .iter()
                .map(|(label, u)| ((*label).clone(), u.waited_ns as f64 / 1e9 / secs))
                .collect(),
            machine_busy_cores: busy as f64 / per_sec,
            machine_stolen_cores: stolen as f64 / per_sec,
            machine_cpu_pressure: pressure,
        }
    }
}

/// Samples taken every `period` from a run's start until it is told to
/// stop: the CPU of each slice between two of them.
#[derive(Debug, Default)]
pub struct Slices(Vec<(Instant, Sample)>);

impl Slices {
    /// Samples `watched` every `period` from `started` until `stop`.
    pub async fn take(
        watched: Vec<Watched>,
        started: Instant,
        period: Duration,
        stop: CancellationToken,
    ) -> Self {
        // Reading /proc blocks (a broker has a hundred threads to read):
        // off the runtime that times the run's results.
        let watched: std::sync::Arc<[Watched]> = watched.into();
        let sample = || {
            let watched = watched.clone();
            async move {
                tokio::task::spawn_blocking(move || (Instant::now(), Sample::take(&watched)))
                    .await
                    .ok()
            }
        };
        let mut every = tokio::time::interval_at(started.into(), period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut samples = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => samples.extend(sample().await),
            }
        }
        // The last slice, unless too short to read: the clock counts whole
        // ticks (10 ms), a few of them in a short slice read as many cores.
        if samples
            .last()
            .is_some_and(|(at, _)| at.elapsed() >= period / 2)
        {
            samples.extend(sample().await);
        }
        Self(samples)
    }

    /// Each slice's CPU by the slot of `slot_secs` since `started` it
    /// began in (a late sample's slice counts where it began).
    pub fn by_slot(&self, started: Instant, slot_secs: f64) -> BTreeMap<usize, SliceCpu> {
        self.0
            .windows(2)
            .map(|w| {
                let ((a_at, a), (b_at, b)) = (&w[0], &w[1]);
                let slot = (a_at.saturating_duration_since(started).as_secs_f64() / slot_secs + 0.5)
                    as usize;
                (slot, a.cores(b, b_at.duration_since(*a_at).as_secs_f64()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process, as the label `me`.
    fn me() -> Vec<Watched> {
        vec![Watched {
            label: "me".into(),
            who: Who::Pids(vec![std::process::id() as i32]),
        }]
    }

    /// Keeps a core busy while `going` says so.
    fn spin(going: impl Fn() -> bool) {
        let mut x = 0u64;
        while going() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }

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
        let watched = me();
        let before = Sample::take(&watched);
        let started = Instant::now();
        spin(|| started.elapsed() < Duration::from_millis(200));
        let after = Sample::take(&watched);
        let per = before.per_request(&after, 1000);
        // 200 ms of spinning over 1000 requests is about 200 µs each.
        assert!(per["me"] > 100.0, "{per:?}");
        assert!(per[SELF_LABEL] >= per["me"] * 0.9, "{per:?}");
        // The same 200 ms as a slice: about one core, which the machine
        // counts among its busy ones.
        let slice = before.cores(&after, started.elapsed().as_secs_f64());
        assert!(slice.cores["me"] > 0.5, "{slice:?}");
        assert!(
            slice.machine_busy_cores >= slice.cores["me"] * 0.9,
            "{slice:?}"
        );
    }

    #[test]
    fn threads_beyond_the_cores_wait_for_one() {
        let watched = me();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let before = Sample::take(&watched);
        let started = Instant::now();
        // Twice as many spinning threads as cores, for 300 ms: each is
        // ready to run all along and gets a core about half of the time.
        // The second sample is taken while they still spin (a thread that
        // ended takes its counts with it).
        let stop = std::sync::atomic::AtomicBool::new(false);
        let slice = std::thread::scope(|scope| {
            for _ in 0..cores * 2 {
                scope.spawn(|| spin(|| !stop.load(std::sync::atomic::Ordering::Relaxed)));
            }
            std::thread::sleep(Duration::from_millis(300)); // the window measured
            let slice = before.cores(&Sample::take(&watched), started.elapsed().as_secs_f64());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            slice
        });
        assert!(
            slice.waiting["me"] > cores as f64 * 0.5,
            "{cores} cores: {slice:?}"
        );
        if std::path::Path::new("/proc/pressure/cpu").exists() {
            assert!(
                slice.machine_cpu_pressure.is_some_and(|p| p > 0.5),
                "{slice:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slices_follow_the_run_quarter_by_quarter() {
        let started = Instant::now();
        let stop = CancellationToken::new();
        let sampler = tokio::spawn(Slices::take(
            me(),
            started,
            Duration::from_millis(250),
            stop.clone(),
        ));
        // A core's worth of spinning for half a second.
        tokio::task::spawn_blocking(|| {
            let spinning = Instant::now();
            spin(|| spinning.elapsed() < Duration::from_millis(500));
        })
        .await
        .unwrap();
        stop.cancel();
        let slots = sampler.await.unwrap().by_slot(started, 0.25);
        let me_in = |slot: usize| slots.get(&slot).map_or(0.0, |s| s.cores["me"]);
        assert!(me_in(0) > 0.3 && me_in(1) > 0.3, "{slots:?}");
        assert!(slots[&0].machine_busy_cores >= me_in(0) * 0.9, "{slots:?}");
    }
}
