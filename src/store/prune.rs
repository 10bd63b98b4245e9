//! Prune selection: which snapshots of one group a set of keep options keeps.
//!
//! The decision is PBS's, checked against `pbs-datastore/src/prune.rs` (`compute_prune_info`,
//! PBS 4.2) and the API's "keep all" rule in `src/api2/admin/datastore.rs` (`prune`):
//! - snapshots are looked at newest first;
//! - an unfinished snapshot (no manifest) is kept only when it is the newest snapshot of the
//!   group; every other unfinished one is removed, and no rule sees them;
//! - the rules run in the order last, hourly, daily, weekly (ISO week), monthly, yearly, each on
//!   local-time periods. A rule passes over periods an earlier rule already kept a snapshot in;
//!   in a new period it keeps the newest snapshot and marks the older ones of that period as
//!   removed (later rules do not see them either); it stops at the first new period past its
//!   count;
//! - protected snapshots are always kept and count for no rule;
//! - options that keep nothing (none given, or all zero) keep every snapshot.

use std::collections::HashSet;

/// The `--keep-*` options; `None` = not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepOptions {
    pub last: Option<u64>,
    pub hourly: Option<u64>,
    pub daily: Option<u64>,
    pub weekly: Option<u64>,
    pub monthly: Option<u64>,
    pub yearly: Option<u64>,
}

impl KeepOptions {
    /// Whether any rule keeps a snapshot; without one, prune keeps everything (as PBS).
    pub fn keeps_something(&self) -> bool {
        self.rules().iter().any(|(_, count)| *count > 0)
    }

    /// The rules given, in the order they are applied.
    fn rules(&self) -> Vec<(KeepRule, u64)> {
        [
            (KeepRule::Last, self.last),
            (KeepRule::Hourly, self.hourly),
            (KeepRule::Daily, self.daily),
            (KeepRule::Weekly, self.weekly),
            (KeepRule::Monthly, self.monthly),
            (KeepRule::Yearly, self.yearly),
        ]
        .into_iter()
        .filter_map(|(rule, count)| count.map(|count| (rule, count)))
        .collect()
    }
}

/// The rule that kept a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeepRule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl KeepRule {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepRule::Last => "keep-last",
            KeepRule::Hourly => "keep-hourly",
            KeepRule::Daily => "keep-daily",
            KeepRule::Weekly => "keep-weekly",
            KeepRule::Monthly => "keep-monthly",
            KeepRule::Yearly => "keep-yearly",
        }
    }
}

/// The decision for one snapshot, with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMark {
    Protected,
    Kept(KeepRule),
    /// The newest snapshot of the group, unfinished (its backup may still be running).
    KeptPartial,
    /// No option keeps anything, so everything is kept.
    KeptAll,
    /// A server kept it without saying why (its answer has only keep and protected).
    KeptByServer,
    Remove,
}

impl PruneMark {
    pub fn keep(self) -> bool {
        self != PruneMark::Remove
    }

    pub fn protected(self) -> bool {
        self == PruneMark::Protected
    }

    /// Why, in words: "keep-daily", "protected", "remove", ...
    pub fn reason(self) -> &'static str {
        match self {
            PruneMark::Protected => "protected",
            PruneMark::Kept(rule) => rule.as_str(),
            PruneMark::KeptPartial => "keep-partial",
            PruneMark::KeptAll => "keep (no keep options)",
            PruneMark::KeptByServer => "keep",
            PruneMark::Remove => "remove",
        }
    }
}

/// What prune needs to know of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneCandidate {
    /// Backup time, seconds since the epoch.
    pub time: i64,
    pub protected: bool,
    /// It has a manifest.
    pub finished: bool,
}

/// A moment in local time, as far as the period rules need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i32,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    /// 0..=23
    pub hour: u32,
    /// Day of the year, 0-based (as `tm_yday`).
    pub yday: u32,
    /// Day of the week, 0 = Sunday (as `tm_wday`).
    pub wday: u32,
}

/// The local time of `epoch` in the process's time zone (`TZ`, else the system's), as PBS's
/// `strftime_local` sees it.
pub fn system_local_time(epoch: i64) -> LocalTime {
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let time = epoch as libc::time_t;
    // SAFETY: valid pointers to a time_t and a tm of our own.
    let ok = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
    if !ok {
        // Out of the C library's range: fall back to UTC arithmetic rather than fail.
        return utc_time(epoch);
    }
    LocalTime {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        yday: tm.tm_yday as u32,
        wday: tm.tm_wday as u32,
    }
}

/// `epoch` in UTC.
pub fn utc_time(epoch: i64) -> LocalTime {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (year, month, day) = crate::format::time::civil_from_days(days);
    let jan1 = crate::format::time::days_from_civil(year, 1, 1);
    LocalTime {
        year: year as i32,
        month,
        day,
        hour: (secs / 3600) as u32,
        yday: (days - jan1) as u32,
        wday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
    }
}

/// ISO 8601 week-numbering year and week of a local day (PBS uses `%G/%V`).
fn iso_week(t: &LocalTime) -> (i32, u32) {
    let weekday = if t.wday == 0 { 7 } else { t.wday as i32 }; // Monday = 1
    let week = (t.yday as i32 + 1 - weekday + 10) / 7;
    if week < 1 {
        (t.year - 1, iso_weeks_in_year(t.year - 1))
    } else if week as u32 > iso_weeks_in_year(t.year) {
        (t.year + 1, 1)
    } else {
        (t.year, week as u32)
    }
}

/// 52 or 53: a year has 53 ISO weeks when it starts on a Thursday, or is a leap year
/// starting on a Wednesday.
fn iso_weeks_in_year(year: i32) -> u32 {
    let starts =
        |y: i32| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if starts(year) == 4 || starts(year - 1) == 3 {
        53
    } else {
        52
    }
}

/// The period of `time` for `rule`: snapshots with equal keys share a period.
fn period(rule: KeepRule, time: i64, local: &LocalTime) -> (i64, u32, u32, u32) {
    let year = local.year as i64;
    match rule {
        KeepRule::Last => (time, 0, 0, 0),
        KeepRule::Hourly => (year, local.month, local.day, local.hour + 1),
        KeepRule::Daily => (year, local.month, local.day, 0),
        KeepRule::Weekly => {
            let (iso_year, week) = iso_week(local);
            (iso_year as i64, week, 0, 0)
        }
        KeepRule::Monthly => (year, local.month, 0, 0),
        KeepRule::Yearly => (year, 0, 0, 0),
    }
}

/// The decision for each of `candidates` (one group; any order), in the same order.
/// `to_local` gives the local time the periods are counted in (normally
/// [`system_local_time`]).
pub fn select(
    candidates: &[PruneCandidate],
    options: &KeepOptions,
    to_local: impl Fn(i64) -> LocalTime,
) -> Vec<PruneMark> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(candidates[i].time));
    let mut marks: Vec<Option<PruneMark>> = vec![None; candidates.len()];

    // Unfinished snapshots: only the newest snapshot of the group may be one that is kept.
    for (position, &i) in order.iter().enumerate() {
        if !candidates[i].finished {
            marks[i] = Some(if position == 0 {
                PruneMark::KeptPartial
            } else {
                PruneMark::Remove
            });
        }
    }

    let locals: Vec<LocalTime> = candidates.iter().map(|c| to_local(c.time)).collect();
    for (rule, count) in options.rules() {
        let key = |i: usize| period(rule, candidates[i].time, &locals[i]);
        let covered: HashSet<_> = order
            .iter()
            .filter(|&&i| matches!(marks[i], Some(PruneMark::Kept(_))))
            .map(|&i| key(i))
            .collect();
        let mut kept_now = HashSet::new();
        for &i in &order {
            if marks[i].is_some() {
                continue;
            }
            if candidates[i].protected {
                marks[i] = Some(PruneMark::Protected);
                continue;
            }
            let period = key(i);
            if covered.contains(&period) {
                continue;
            }
            if kept_now.contains(&period) {
                marks[i] = Some(PruneMark::Remove);
            } else if (kept_now.len() as u64) < count {
                kept_now.insert(period);
                marks[i] = Some(PruneMark::Kept(rule));
            } else {
                break;
            }
        }
    }

    let keep_all = !options.keeps_something();
    candidates
        .iter()
        .zip(marks)
        .map(|(candidate, mark)| {
            if candidate.protected {
                PruneMark::Protected
            } else if keep_all {
                PruneMark::KeptAll
            } else {
                mark.unwrap_or(PruneMark::Remove)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    // ---- A reference written from PBS's documented rules (docs/maintenance.rst, "Pruning",
    // and the prune simulator), structured by period rather than by a walk, with its own
    // calendar arithmetic, for time zones with a fixed offset.

    /// Civil date of a day count, by counting whole years and months (slow and plain).
    fn ref_date(mut days: i64) -> (i64, u32, u32) {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut year = 1970;
        loop {
            let len = if leap(year) { 366 } else { 365 };
            if days < 0 {
                year -= 1;
                days += if leap(year) { 366 } else { 365 };
            } else if days >= len {
                days -= len;
                year += 1;
            } else {
                break;
            }
        }
        let lengths = [
            31,
            if leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let mut month = 0;
        while days >= lengths[month] {
            days -= lengths[month];
            month += 1;
        }
        (year, month as u32 + 1, days as u32 + 1)
    }

    /// The documented periods: hour, day, ISO week (Monday to Sunday, the week belongs to the
    /// year of its Thursday), month, year.
    fn ref_period(rule: KeepRule, time: i64, offset: i64) -> String {
        let local = time + offset;
        let day = local.div_euclid(86_400);
        let (y, m, d) = ref_date(day);
        let hour = local.rem_euclid(86_400) / 3600;
        match rule {
            KeepRule::Last => time.to_string(),
            KeepRule::Hourly => format!("{y}-{m}-{d} {hour}"),
            KeepRule::Daily => format!("{y}-{m}-{d}"),
            KeepRule::Weekly => {
                let monday_based = (day + 3).rem_euclid(7); // 1970-01-01 was a Thursday
                let thursday = day - monday_based + 3;
                let (ty, _, _) = ref_date(thursday);
                let mut jan1 = thursday;
                while ref_date(jan1 - 1).0 == ty {
                    jan1 -= 1;
                }
                format!("{ty}/W{}", (thursday - jan1) / 7 + 1)
            }
            KeepRule::Monthly => format!("{y}-{m}"),
            KeepRule::Yearly => format!("{y}"),
        }
    }

    /// keep (true) or remove for each candidate.
    fn reference(list: &[PruneCandidate], options: &KeepOptions, offset: i64) -> Vec<bool> {
        let rules = [
            (KeepRule::Last, options.last),
            (KeepRule::Hourly, options.hourly),
            (KeepRule::Daily, options.daily),
            (KeepRule::Weekly, options.weekly),
            (KeepRule::Monthly, options.monthly),
            (KeepRule::Yearly, options.yearly),
        ];
        // "Keep all" when no option asks for anything.
        if rules.iter().all(|(_, n)| n.unwrap_or(0) == 0) {
            return vec![true; list.len()];
        }
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Open,
            Keep,
            Gone,
        }
        let mut newest_first: Vec<usize> = (0..list.len()).collect();
        newest_first.sort_by(|a, b| list[*b].time.cmp(&list[*a].time));
        let mut state = vec![State::Open; list.len()];
        // "Old unfinished or incomplete backups will be removed by the prune command, unless
        // they are newer than the last successful backup. In this case, the last failed
        // backup is retained."
        let newest_finished = list.iter().filter(|c| c.finished).map(|c| c.time).max();
        let last_failed = list.iter().filter(|c| !c.finished).map(|c| c.time).max();
        // No failed backup, retained or not, is a kept backup for the period options.
        for (i, c) in list.iter().enumerate() {
            if !c.finished {
                state[i] = State::Gone;
            }
        }
        for (rule, count) in rules {
            let Some(count) = count else { continue };
            // Periods already covered by what earlier options keep are not counted again.
            let covered: HashSet<String> = (0..list.len())
                .filter(|&i| state[i] == State::Keep)
                .map(|i| ref_period(rule, list[i].time, offset))
                .collect();
            // The open backups of each new period, newest first; periods newest first.
            let mut periods: Vec<(String, Vec<usize>)> = Vec::new();
            for &i in &newest_first {
                if state[i] != State::Open || list[i].protected {
                    continue;
                }
                let p = ref_period(rule, list[i].time, offset);
                if covered.contains(&p) {
                    continue;
                }
                match periods.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, members)) => members.push(i),
                    None => periods.push((p, vec![i])),
                }
            }
            // "Keep backups for the last N <periods>. If there is more than one backup for a
            // single <period>, only the latest is retained": the older ones are removed, and
            // later options do not consider them either (as the simulator shows).
            for (_, members) in periods.into_iter().take(count as usize) {
                state[members[0]] = State::Keep;
                for &older in &members[1..] {
                    state[older] = State::Gone;
                }
            }
        }
        (0..list.len())
            .map(|i| {
                let c = &list[i];
                let retained_failed = !c.finished
                    && Some(c.time) == last_failed
                    && newest_finished.is_none_or(|f| c.time > f);
                c.protected || retained_failed || state[i] == State::Keep
            })
            .collect()
    }

    fn fixed(offset: i64) -> impl Fn(i64) -> LocalTime {
        move |t| utc_time(t + offset)
    }

    fn keeps(list: &[PruneCandidate], options: &KeepOptions, offset: i64) -> Vec<bool> {
        select(list, options, fixed(offset))
            .into_iter()
            .map(PruneMark::keep)
            .collect()
    }

    fn history(rng: &mut StdRng) -> Vec<PruneCandidate> {
        let start = 1_500_000_000 + rng.gen_range(0..400_000_000i64);
        let span = rng.gen_range(30..4 * 365) * 86_400i64;
        let count = rng.gen_range(100..500);
        let mut times = HashSet::new();
        let mut list = Vec::new();
        while list.len() < count {
            // Clusters (several backups in one hour or day) and scattered ones.
            let time = if rng.gen_bool(0.3) && !list.is_empty() {
                let base: &PruneCandidate = &list[rng.gen_range(0..list.len())];
                base.time + rng.gen_range(-7200..7200)
            } else {
                start + rng.gen_range(0..span)
            };
            if !times.insert(time) {
                continue;
            }
            list.push(PruneCandidate {
                time,
                protected: rng.gen_bool(0.05),
                finished: !rng.gen_bool(0.03),
            });
        }
        list
    }

    #[test]
    fn long_random_histories_match_the_documented_rules() {
        let mut rng = StdRng::seed_from_u64(15);
        let offsets = [0, 3600, -5 * 3600, 5 * 3600 + 1800, 14 * 3600, -12 * 3600];
        let mut compared = 0;
        for round in 0..24 {
            let mut list = history(&mut rng);
            if round % 3 == 0 {
                // The newest one unfinished: a backup still running.
                let newest = list.iter_mut().max_by_key(|c| c.time).unwrap();
                newest.finished = false;
            }
            let offset = offsets[round % offsets.len()];
            for subset in 0u32..64 {
                let mut pick =
                    |bit: u32| (subset & (1 << bit) != 0).then(|| rng.gen_range(0..8u64));
                let options = KeepOptions {
                    last: pick(0),
                    hourly: pick(1),
                    daily: pick(2),
                    weekly: pick(3),
                    monthly: pick(4),
                    yearly: pick(5),
                };
                assert_eq!(
                    keeps(&list, &options, offset),
                    reference(&list, &options, offset),
                    "round {round}, options {options:?}, offset {offset}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 24 * 64);
    }

    #[test]
    fn iso_weeks_match_the_reference_across_many_years() {
        for day in (-800..30_000i64).step_by(1) {
            let t = day * 86_400 + 43_200;
            let (y, w) = iso_week(&utc_time(t));
            assert_eq!(
                format!("{y}/W{w}"),
                ref_period(KeepRule::Weekly, t, 0),
                "day {day}"
            );
        }
    }

    // ---- The documentation's statements as examples (times in UTC).

    fn at(text: &str) -> i64 {
        crate::format::time::parse_rfc3339(text).unwrap()
    }

    fn snapshots(times: &[&str]) -> Vec<PruneCandidate> {
        times
            .iter()
            .map(|t| PruneCandidate {
                time: at(t),
                protected: false,
                finished: true,
            })
            .collect()
    }

    fn kept(list: &[PruneCandidate], options: KeepOptions) -> Vec<String> {
        let marks = select(list, &options, utc_time);
        list.iter()
            .zip(marks)
            .filter(|(_, m)| m.keep())
            .map(|(c, _)| crate::format::time::epoch_to_rfc3339(c.time).unwrap())
            .collect()
    }

    const DEC: [&str; 4] = [
        "2019-12-02T11:59:15Z",
        "2019-12-03T11:59:15Z",
        "2019-12-04T11:59:15Z",
        "2019-12-04T12:59:15Z",
    ];

    #[test]
    fn only_the_latest_backup_of_a_period_is_retained() {
        let list = snapshots(&DEC);
        let daily = |n| KeepOptions {
            daily: Some(n),
            ..Default::default()
        };
        assert_eq!(kept(&list, daily(2)), [DEC[1], DEC[3]]);
        assert_eq!(kept(&list, daily(3)), [DEC[0], DEC[1], DEC[3]]);
        // All in one week, month, year: one is kept however many are asked for.
        for options in [
            KeepOptions {
                weekly: Some(5),
                ..Default::default()
            },
            KeepOptions {
                monthly: Some(6),
                ..Default::default()
            },
            KeepOptions {
                yearly: Some(7),
                ..Default::default()
            },
            KeepOptions {
                weekly: Some(5),
                monthly: Some(6),
                yearly: Some(7),
                ..Default::default()
            },
        ] {
            assert_eq!(kept(&list, options), [DEC[3]], "{options:?}");
        }
        let last = |n| KeepOptions {
            last: Some(n),
            ..Default::default()
        };
        assert_eq!(kept(&list, last(2)), [DEC[2], DEC[3]]);
        assert_eq!(kept(&list, last(4)), DEC);
        let both = KeepOptions {
            last: Some(2),
            daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&list, both), DEC);
    }

    #[test]
    fn later_options_only_cover_older_periods_and_empty_periods_do_not_count() {
        let times = [
            "2018-11-15T11:59:15Z",
            "2019-11-15T11:59:15Z",
            "2019-11-21T11:59:15Z",
            "2019-11-22T11:59:15Z",
            "2019-11-29T11:59:15Z",
            "2019-12-01T11:59:15Z",
            "2019-12-02T11:59:15Z",
            "2019-12-03T11:59:15Z",
            "2019-12-04T11:59:15Z",
        ];
        let list = snapshots(&times);
        let o = |last, daily, weekly, monthly, yearly| KeepOptions {
            last,
            daily,
            weekly,
            monthly,
            yearly,
            hourly: None,
        };
        assert_eq!(
            kept(&list, o(Some(1), Some(1), None, None, None)),
            [times[7], times[8]]
        );
        // 2019-12-01 is a Sunday: the ISO week before the one of December 4.
        assert_eq!(
            kept(&list, o(None, Some(1), Some(1), None, None)),
            [times[5], times[8]]
        );
        assert_eq!(
            kept(&list, o(None, Some(1), Some(1), Some(1), None)),
            [times[3], times[5], times[8]]
        );
        assert_eq!(
            kept(&list, o(None, None, None, Some(1), Some(1))),
            [times[0], times[8]]
        );
    }

    #[test]
    fn protected_snapshots_are_kept_and_count_for_no_option() {
        let mut list = snapshots(&[
            "2019-11-15T09:39:15Z",
            "2019-11-15T10:39:15Z",
            "2019-11-15T10:49:15Z",
            "2019-11-15T10:59:15Z",
        ]);
        list[0].protected = true;
        list[3].protected = true;
        for options in [
            KeepOptions {
                last: Some(1),
                ..Default::default()
            },
            KeepOptions {
                hourly: Some(1),
                ..Default::default()
            },
        ] {
            let marks = select(&list, &options, utc_time);
            assert_eq!(
                marks,
                [
                    PruneMark::Protected,
                    PruneMark::Remove,
                    PruneMark::Kept(options.rules()[0].0),
                    PruneMark::Protected
                ]
            );
        }
    }

    #[test]
    fn the_last_failed_backup_is_retained_only_when_newer_than_the_last_success() {
        let mut list = snapshots(&[
            "2020-01-01T00:00:00Z",
            "2020-01-02T00:00:00Z",
            "2020-01-03T00:00:00Z",
            "2020-01-04T00:00:00Z",
        ]);
        list[1].finished = false;
        list[3].finished = false;
        let options = KeepOptions {
            last: Some(1),
            ..Default::default()
        };
        let marks = select(&list, &options, utc_time);
        assert_eq!(
            marks,
            [
                PruneMark::Remove,
                PruneMark::Remove,
                PruneMark::Kept(KeepRule::Last),
                PruneMark::KeptPartial
            ]
        );
    }

    #[test]
    fn no_keep_option_keeps_everything() {
        let list = snapshots(&DEC);
        for options in [
            KeepOptions::default(),
            KeepOptions {
                last: Some(0),
                ..Default::default()
            },
        ] {
            assert!(select(&list, &options, utc_time)
                .iter()
                .all(|m| *m == PruneMark::KeptAll));
        }
    }

    #[test]
    fn periods_are_counted_in_local_time() {
        // 23:30 and 00:30 UTC are one day at UTC+2 (01:30 and 02:30 of the next day).
        let list = snapshots(&["2020-05-01T23:30:00Z", "2020-05-02T00:30:00Z"]);
        let daily = KeepOptions {
            daily: Some(5),
            ..Default::default()
        };
        let in_utc: Vec<bool> = select(&list, &daily, utc_time)
            .iter()
            .map(|m| m.keep())
            .collect();
        assert_eq!(in_utc, [true, true]);
        assert_eq!(keeps(&list, &daily, 7200), [false, true]);
    }
}
