//! Tollgate's own endpoints, answered without going upstream.

use serde::Serialize;

use crate::error::Reply;
use crate::totals::Totals;

/// `GET /usage`: the caller's own totals, never another key's.
pub fn usage_reply(key_id: &str, totals: &Totals) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        key_id: &'a str,
        requests: u64,
        input_tokens: u64,
        output_tokens: u64,
        cache_read_tokens: u64,
        cache_write_tokens: u64,
        cost_pico_usd: u64,
        /// Exact decimal USD, as a string so no client rounds it through a float.
        cost_usd: String,
    }
    Reply::json(
        200,
        &Body {
            key_id,
            requests: totals.requests,
            input_tokens: totals.input_tokens,
            output_tokens: totals.output_tokens,
            cache_read_tokens: totals.cache_read_tokens,
            cache_write_tokens: totals.cache_write_tokens,
            cost_pico_usd: totals.cost_pico_usd,
            cost_usd: format_usd(totals.cost_pico_usd),
        },
    )
}

/// Exact decimal rendering of pico-USD: `1_500_000` → `"0.0000015"`.
pub fn format_usd(pico: u64) -> String {
    const SCALE: u64 = 1_000_000_000_000;
    let (whole, frac) = (pico / SCALE, pico % SCALE);
    if frac == 0 {
        return format!("{whole}.00");
    }
    let digits = format!("{frac:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_exact() {
        assert_eq!(format_usd(0), "0.00");
        assert_eq!(format_usd(1), "0.000000000001");
        assert_eq!(format_usd(1_500_000), "0.0000015");
        assert_eq!(format_usd(12_340_000_000_000), "12.34");
        assert_eq!(format_usd(3_000_000_000_000), "3.00");
        assert_eq!(format_usd(u64::MAX), "18446744.073709551615");
    }

    #[test]
    fn usage_reply_names_the_key() {
        let r = usage_reply(
            "team-a",
            &Totals {
                requests: 2,
                cost_pico_usd: 5,
                ..Default::default()
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["key_id"], "team-a");
        assert_eq!(v["requests"], 2);
        assert_eq!(v["cost_usd"], "0.000000000005");
    }
}
