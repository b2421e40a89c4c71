//! On-demand prices per instance type: a built-in table, every price with
//! its source and date, and a file format to replace it.
//!
//! The built-in figures are AWS's own on-demand list prices (Linux,
//! us-east-1) as Karpenter's AWS provider records them in its generated
//! price table (`pkg/providers/pricing/zz_generated.pricing_aws.go` of
//! aws/karpenter-provider-aws, generated 2026-07-20 from the AWS Price List
//! API); they were read from that file, not from AWS directly, which this
//! project cannot reach. They include the June 2025 P4/P5 price cut
//! (p5.48xlarge 55.04, p4d.24xlarge 21.96). A preset that file has no price
//! for (p5e.48xlarge) has none here: no figure is made up. Prices change:
//! pass `--prices FILE` for real decisions.
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

use crate::error::InputError;
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
pub const BUILTIN_DATE: &str = "2026-07-20";

/// What every built-in price is: its source kind, named so a reader can
/// check it.
pub const BUILTIN_SOURCE: &str = "AWS price list (on-demand, Linux, us-east-1) as recorded in Karpenter's AWS provider generated price table";

/// Presets the built-in table has no price for, and why.
pub const UNPRICED_PRESETS: &[(&str, &str)] = &[(
    "p5e.48xlarge",
    "not in Karpenter's generated us-east-1 price table",
)];

/// `(instance, USD per hour)`, copied from Karpenter's AWS provider
/// `zz_generated.pricing_aws.go` (us-east-1, generated 2026-07-20).
const BUILTIN_PRICES: &[(&str, f64)] = &[
    ("p4d.24xlarge", 21.957642),
    ("p4de.24xlarge", 27.44705),
    ("p5.4xlarge", 6.88),
    ("p5.48xlarge", 55.04),
    ("p5en.48xlarge", 63.296),
    ("p6-b200.48xlarge", 113.9328),
    ("p6-b300.48xlarge", 142.416),
    ("g5g.xlarge", 0.42),
    ("g5g.2xlarge", 0.556),
    ("g5g.4xlarge", 0.828),
    ("g5g.8xlarge", 1.372),
    ("g5g.16xlarge", 2.744),
    ("g5g.metal", 2.744),
    ("g6f.large", 0.202),
    ("g6f.xlarge", 0.2375),
    ("g6f.2xlarge", 0.475),
    ("g6f.4xlarge", 0.95),
    ("gr6f.4xlarge", 1.066),
    ("g7.2xlarge", 2.52),
    ("g7.4xlarge", 3.04208),
    ("g7.8xlarge", 4.08624),
    ("g7.12xlarge", 7.12832),
    ("g7.24xlarge", 14.25664),
    ("g7.48xlarge", 28.51328),
    ("g7e.2xlarge", 3.36312),
    ("g7e.4xlarge", 3.99816),
    ("g7e.8xlarge", 5.26824),
    ("g7e.12xlarge", 8.28608),
    ("g7e.24xlarge", 16.57216),
    ("g7e.48xlarge", 33.14432),
    ("g5.xlarge", 1.006),
    ("g5.2xlarge", 1.212),
    ("g5.4xlarge", 1.624),
    ("g5.8xlarge", 2.448),
    ("g5.16xlarge", 4.096),
    ("g5.12xlarge", 5.672),
    ("g5.24xlarge", 8.144),
    ("g5.48xlarge", 16.288),
    ("g6.xlarge", 0.8048),
    ("g6.2xlarge", 0.9776),
    ("g6.4xlarge", 1.3232),
    ("g6.8xlarge", 2.0144),
    ("g6.16xlarge", 3.3968),
    ("g6.12xlarge", 4.6016),
    ("g6.24xlarge", 6.6752),
    ("g6.48xlarge", 13.3504),
    ("gr6.4xlarge", 1.5392),
    ("gr6.8xlarge", 2.4464),
    ("g6e.xlarge", 1.861),
    ("g6e.2xlarge", 2.24208),
    ("g6e.4xlarge", 3.00424),
    ("g6e.8xlarge", 4.52856),
    ("g6e.16xlarge", 7.57719),
    ("g6e.12xlarge", 10.49264),
    ("g6e.24xlarge", 15.06559),
    ("g6e.48xlarge", 30.13118),
    ("g4dn.xlarge", 0.526),
    ("g4dn.2xlarge", 0.752),
    ("g4dn.4xlarge", 1.204),
    ("g4dn.8xlarge", 2.176),
    ("g4dn.16xlarge", 4.352),
    ("g4dn.12xlarge", 3.912),
    ("g4dn.metal", 7.824),
    ("p3.2xlarge", 3.06),
    ("p3.8xlarge", 12.24),
    ("p3.16xlarge", 24.48),
    ("p3dn.24xlarge", 31.212),
];

/// The built-in table (Linux, on-demand, us-east-1).
pub fn builtin() -> PriceTable {
    PriceTable {
        date: BUILTIN_DATE.into(),
        currency: usd(),
        origin: "built-in".into(),
        prices: BUILTIN_PRICES
            .iter()
            .map(|&(instance, usd_per_hour)| Price {
                instance: instance.into(),
                usd_per_hour,
                region: Some("us-east-1".into()),
                source: BUILTIN_SOURCE.into(),
                date: BUILTIN_DATE.into(),
                note: None,
            })
            .collect(),
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
    pub fn parse(text: &str, source: &str) -> Result<PriceTable, InputError> {
        let mut table: PriceTable = serde_saphyr::from_str(text).map_err(|e| {
            crate::invalid!(
                source,
                "not a price table: {}; expected `date:` and `prices:` with \
                 `instance`, `usdPerHour`, `source` and `date` per entry",
                gpu_slicer_core::messages::yaml_error(&e)
            )
        })?;
        for entry in &table.prices {
            if !(entry.usd_per_hour.is_finite() && entry.usd_per_hour > 0.0) {
                return Err(crate::invalid!(
                    source,
                    "{}: usdPerHour must be a positive number, not {}",
                    entry.instance,
                    entry.usd_per_hour
                ));
            }
        }
        table.origin = source.to_string();
        Ok(table)
    }

    /// Reads a price file.
    pub fn load(path: &Path) -> Result<PriceTable, InputError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| InputError::Unreadable {
            what: format!("the price file {source}"),
            reason: gpu_slicer_core::messages::io_error(&e),
            hint: Some("check --prices".to_string()),
        })?;
        Self::parse(&text, &source)
    }

    /// `built-in table dated 2026-09-01` / `prices.yaml dated ...`.
    pub fn describe(&self) -> String {
        format!("{} price table dated {}", self.origin, self.date)
    }
}

/// `$21.96/h on-demand (us-east-1; <source>, 2026-07-20)`.
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
        assert_eq!(t.price("P4D.24xlarge").unwrap().usd_per_hour, 21.957642);
        assert_eq!(t.price("p5.48xlarge").unwrap().usd_per_hour, 55.04);
    }

    /// Defect: most presets had no price (`plan --instance g5.12xlarge`
    /// said so). Every preset has one, or is listed as unpriced with why.
    #[test]
    fn every_preset_is_priced_or_says_why_not() {
        let t = builtin();
        for preset in gpu_slicer_core::gpu::catalog::instances() {
            let unpriced = UNPRICED_PRESETS.iter().any(|(n, _)| *n == preset.name);
            assert_ne!(
                t.price(preset.name).is_some(),
                unpriced,
                "{}: priced and unpriced, or neither",
                preset.name
            );
        }
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
                .to_string()
                .contains("date")
        );
        assert!(
            PriceTable::parse(
                "date: x\nprices:\n  - {instance: a, usdPerHour: -1, source: s, date: d}\n",
                "x"
            )
            .unwrap_err()
            .to_string()
            .contains("positive")
        );
    }
}
