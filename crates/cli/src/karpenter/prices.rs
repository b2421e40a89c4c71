//! On-demand prices per instance type: a small built-in table, every price
//! with its source and date, and a file format to replace it.
//!
//! The built-in figures are third-party quotes (each entry names its source
//! and date). AWS cut P4/P5 on-demand prices by up to 45 % in
//! June 2025, so the p5.48xlarge figure (pre-cut) overstates today's price.
//! Check the AWS pricing page and pass `--prices FILE` for real decisions.
//!
//! File format (YAML or JSON):
//!
//! ```yaml
//! date: 2026-09-01          # when the table was compiled
//! currency: USD             # optional, USD by default
//! prices:
//!   - instance: p5.48xlarge
//!     usdPerHour: 55.04
//!     region: us-east-1      # optional
//!     source: AWS on-demand pricing page
//!     date: 2026-09-01
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One instance price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    pub instance: String,
    pub usd_per_hour: f64,
    #[serde(default)]
    pub region: Option<String>,
    pub source: String,
    pub date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A dated price table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceTable {
    /// When the table was compiled.
    pub date: String,
    #[serde(default = "usd")]
    pub currency: String,
    /// Where the table comes from (`built-in` or the file).
    #[serde(default, skip_deserializing)]
    pub origin: String,
    pub prices: Vec<Price>,
}

fn usd() -> String {
    "USD".into()
}

/// The date the built-in table was compiled.
pub const BUILTIN_DATE: &str = "2026-09-01";

fn p(instance: &str, usd: f64, source: &str, date: &str, note: Option<&str>) -> Price {
    Price {
        instance: instance.into(),
        usd_per_hour: usd,
        region: Some("us-east-1".into()),
        source: source.into(),
        date: date.into(),
        note: note.map(str::to_string),
    }
}

/// The built-in table (Linux, on-demand, us-east-1).
pub fn builtin() -> PriceTable {
    PriceTable {
        date: BUILTIN_DATE.into(),
        currency: usd(),
        origin: "built-in".into(),
        prices: vec![
            p(
                "p4d.24xlarge",
                21.97,
                "cloudurable.com",
                "2025-06-28",
                Some("after the June 2025 P4/P5 price cut"),
            ),
            p(
                "p4de.24xlarge",
                27.45,
                "cloudurable.com",
                "2025-06-28",
                Some("after the June 2025 P4/P5 price cut"),
            ),
            p(
                "p5.48xlarge",
                98.32,
                "nextplatform.com",
                "2023-07-27",
                Some(
                    "pre-June-2025 list price; AWS cut P4/P5 on-demand prices by up to 45% since: pass --prices",
                ),
            ),
            p("g5.xlarge", 1.006, "factualminds.com", "2026-06-17", None),
            p("g5.48xlarge", 16.29, "cloudurable.com", "2025-06-28", None),
            p("g6.48xlarge", 13.35, "cloudurable.com", "2025-06-28", None),
        ],
    }
}

impl PriceTable {
    /// The price of an instance type (case-insensitive).
    pub fn price(&self, instance: &str) -> Option<&Price> {
        self.prices
            .iter()
            .find(|p| p.instance.eq_ignore_ascii_case(instance))
    }

    /// Parses a price file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<PriceTable, String> {
        let mut table: PriceTable = serde_saphyr::from_str(text).map_err(|e| {
            format!(
                "{source}: not a price table: {e}; expected `date:` and `prices:` with \
                 `instance`, `usdPerHour`, `source` and `date` per entry"
            )
        })?;
        for entry in &table.prices {
            if !(entry.usd_per_hour.is_finite() && entry.usd_per_hour > 0.0) {
                return Err(format!(
                    "{source}: {}: usdPerHour must be a positive number, not {}",
                    entry.instance, entry.usd_per_hour
                ));
            }
        }
        table.origin = source.to_string();
        Ok(table)
    }

    /// Reads a price file.
    pub fn load(path: &Path) -> Result<PriceTable, String> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the price file {source}: {e}; check --prices"))?;
        Self::parse(&text, &source)
    }

    /// `built-in table dated 2026-09-01` / `prices.yaml dated ...`.
    pub fn describe(&self) -> String {
        format!("{} price table dated {}", self.origin, self.date)
    }
}

/// `$21.97/h (us-east-1; cloudurable.com, 2025-06-28)`.
pub fn describe_price(price: &Price) -> String {
    let mut text = format!("${}/h on-demand (", money(price.usd_per_hour));
    if let Some(region) = &price.region {
        text.push_str(region);
        text.push_str("; ");
    }
    text.push_str(&format!("{}, {})", price.source, price.date));
    if let Some(note) = &price.note {
        text.push_str(&format!(" [{note}]"));
    }
    text
}

/// Dollars with enough digits for per-slice prices.
pub fn money(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_dated_and_sourced() {
        let t = builtin();
        assert_eq!(t.date, BUILTIN_DATE);
        for p in &t.prices {
            assert!(
                gpu_slicer_core::gpu::catalog::instance(&p.instance).is_some(),
                "{}",
                p.instance
            );
            assert!(!p.source.is_empty() && p.date.len() == 10);
        }
        assert_eq!(t.price("P4D.24xlarge").unwrap().usd_per_hour, 21.97);
    }

    #[test]
    fn file_overrides() {
        let t = PriceTable::parse(
            "date: 2026-09-02\nprices:\n  - {instance: p5.48xlarge, usdPerHour: 55.04, source: aws, date: 2026-09-02}\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(t.describe(), "p.yaml price table dated 2026-09-02");
        assert!(
            PriceTable::parse("prices: []", "x")
                .unwrap_err()
                .contains("date")
        );
        assert!(
            PriceTable::parse(
                "date: x\nprices:\n  - {instance: a, usdPerHour: -1, source: s, date: d}\n",
                "x"
            )
            .unwrap_err()
            .contains("positive")
        );
    }
}
