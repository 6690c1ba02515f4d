//! The names spend is kept under, and the usage report made from them.
//!
//! Two kinds of hash, both of plain integer counters (see [`super::counters`]):
//! - `{prefix}:usage:{day}`: a UTC day's usage, one field per quantity and
//!   row (team, key, user, model group, deployment, account, model), named
//!   `{quantity}|{row as a JSON array}`. A report reads one hash a day.
//! - `{prefix}:spend:{subject}:{period}:{number}`: a key's or a team's
//!   tokens (`t`), nano-USD (`u`) and requests (`r`) in one budget period,
//!   which a budget check reads without summing days.

use std::collections::BTreeMap;

use serde::Serialize;

use super::counters::Sums;
use super::period::{self, Period};
use super::prices::usd;

/// Who and what one booking was for: the columns of the usage report.
/// Calls without a key have an empty team, key and user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row {
    pub team: String,
    pub key: String,
    pub user: String,
    pub group: String,
    pub deployment: String,
    pub account: String,
    pub model: String,
}

impl Row {
    fn encode(&self) -> String {
        serde_json::to_string(&[
            &self.team,
            &self.key,
            &self.user,
            &self.group,
            &self.deployment,
            &self.account,
            &self.model,
        ])
        .expect("strings serialize")
    }

    fn decode(text: &str) -> Option<Self> {
        let [team, key, user, group, deployment, account, model]: [String; 7] =
            serde_json::from_str(text).ok()?;
        Some(Self {
            team,
            key,
            user,
            group,
            deployment,
            account,
            model,
        })
    }
}

/// What a row used: the report's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub nano_usd: u64,
}

/// The quantities a usage hash counts, by their field names.
pub const REQUESTS: &str = "requests";
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";
pub const CACHE_READ: &str = "cache_read";
pub const CACHE_WRITE: &str = "cache_write";
pub const NANO_USD: &str = "nano_usd";

impl Totals {
    fn add(&mut self, quantity: &str, count: u64) {
        let slot = match quantity {
            REQUESTS => &mut self.requests,
            INPUT => &mut self.input_tokens,
            OUTPUT => &mut self.output_tokens,
            CACHE_READ => &mut self.cache_read_tokens,
            CACHE_WRITE => &mut self.cache_write_tokens,
            NANO_USD => &mut self.nano_usd,
            _ => return,
        };
        *slot += count;
    }

    fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.nano_usd += other.nano_usd;
    }
}

/// The names of one fleet's spend hashes.
#[derive(Debug, Clone)]
pub struct Ledger {
    prefix: String,
}

impl Ledger {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash of day `day`'s usage.
    pub fn usage_hash(&self, day: u64) -> String {
        format!("{}:usage:{day}", self.prefix)
    }

    /// The field of `quantity` of `row` in a usage hash.
    pub fn usage_field(quantity: &str, row: &Row) -> String {
        format!("{quantity}|{}", row.encode())
    }

    /// The hash of `subject`'s (`key:<id>` | `team:<name>`) spend in the
    /// `period` that `now_ms` falls in.
    pub fn spend_hash(&self, subject: &str, period: Period, now_ms: u64) -> String {
        format!(
            "{}:spend:{subject}:{}:{}",
            self.prefix,
            period.name(),
            period.index(now_ms)
        )
    }
}

/// What a report's rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Team,
    Key,
    User,
    Model,
    Group,
    Deployment,
    Account,
    Day,
}

impl GroupBy {
    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::Key => "key",
            Self::User => "user",
            Self::Model => "model",
            Self::Group => "group",
            Self::Deployment => "deployment",
            Self::Account => "account",
            Self::Day => "day",
        }
    }

    fn column(self, day: u64, row: &Row) -> String {
        match self {
            Self::Team => row.team.clone(),
            Self::Key => row.key.clone(),
            Self::User => row.user.clone(),
            Self::Model => row.model.clone(),
            Self::Group => row.group.clone(),
            Self::Deployment => row.deployment.clone(),
            Self::Account => row.account.clone(),
            Self::Day => period::date(day),
        }
    }
}

/// The totals of `days` (each day's number and its usage hash), grouped
/// by `group_by`, sorted by that column.
pub fn report(days: &[(u64, Sums)], group_by: GroupBy) -> BTreeMap<String, Totals> {
    let mut rows: BTreeMap<String, Totals> = BTreeMap::new();
    for (day, sums) in days {
        for (field, count) in sums {
            let Some((quantity, row)) = field.split_once('|') else {
                continue;
            };
            let Some(row) = Row::decode(row) else {
                continue;
            };
            rows.entry(group_by.column(*day, &row))
                .or_default()
                .add(quantity, u64::try_from(*count).unwrap_or(0));
        }
    }
    rows
}

/// The sum of every row.
pub fn total(rows: &BTreeMap<String, Totals>) -> Totals {
    rows.values().fold(Totals::default(), |mut sum, t| {
        sum.merge(t);
        sum
    })
}

/// A row of the report as JSON, under the column `name`.
pub fn row_json(name: &str, value: &str, totals: &Totals) -> serde_json::Value {
    let mut row = totals_json(totals);
    row[name] = serde_json::Value::String(value.to_owned());
    row
}

/// Totals as JSON.
pub fn totals_json(t: &Totals) -> serde_json::Value {
    serde_json::json!({
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cache_read_tokens": t.cache_read_tokens,
        "cache_write_tokens": t.cache_write_tokens,
        "usd": usd(t.nano_usd),
    })
}

/// The report as CSV, a header line first.
pub fn csv(group_by: GroupBy, rows: &BTreeMap<String, Totals>) -> String {
    let mut out = format!(
        "{},requests,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,usd\n",
        group_by.name()
    );
    for (value, t) in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.9}\n",
            csv_cell(value),
            t.requests,
            t.input_tokens,
            t.output_tokens,
            t.cache_read_tokens,
            t.cache_write_tokens,
            usd(t.nano_usd)
        ));
    }
    out
}

/// A cell quoted when it holds a comma, a quote or a line break (RFC 4180),
/// and defused when a spreadsheet would run it as a formula.
fn csv_cell(value: &str) -> String {
    let value = match value.chars().next() {
        Some('=' | '+' | '-' | '@') => format!("'{value}"),
        _ => value.to_owned(),
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(team: &str, model: &str) -> Row {
        Row {
            team: team.into(),
            key: "key_1".into(),
            group: "claude".into(),
            model: model.into(),
            ..Row::default()
        }
    }

    #[test]
    fn a_report_groups_every_days_rows() {
        let a = row("search", "m1");
        let b = row("ads", "m2");
        let day = |entries: &[(&str, &Row, i64)]| -> Sums {
            entries
                .iter()
                .map(|(q, r, n)| (Ledger::usage_field(q, r), *n))
                .collect()
        };
        let days = vec![
            (
                20_000,
                day(&[(REQUESTS, &a, 2), (INPUT, &a, 100), (NANO_USD, &a, 5)]),
            ),
            (
                20_001,
                day(&[(REQUESTS, &a, 1), (REQUESTS, &b, 4), (OUTPUT, &b, 7)]),
            ),
        ];
        let by_team = report(&days, GroupBy::Team);
        assert_eq!(by_team["search"].requests, 3);
        assert_eq!(by_team["search"].input_tokens, 100);
        assert_eq!(by_team["ads"].output_tokens, 7);
        assert_eq!(total(&by_team).requests, 7);
        let by_day = report(&days, GroupBy::Day);
        assert_eq!(by_day[&period::date(20_001)].requests, 5);
        let csv = csv(GroupBy::Team, &by_team);
        assert!(csv.starts_with("team,requests,"), "{csv}");
        assert!(csv.contains("\nsearch,3,100,0,0,0,0.000000005\n"), "{csv}");
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=1+1"), "'=1+1");
        assert_eq!(csv_cell("plain"), "plain");
    }
}
