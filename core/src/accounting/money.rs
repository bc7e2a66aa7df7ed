//! Money: integers of pico-USD (1e-12 USD), never floating point. Every amount the gateway
//! reads (a budget in the configuration), writes (`/usage`, refusal messages) or rounds
//! (metrics in micro-USD) goes through here, so there is one reading of a decimal and one way
//! to round.
//!
//! Costs themselves stay `u64` pico-USD where they are computed and counted (prices, records,
//! counters: about $18.4M per value); [`PicoUsd`] is wide enough for lifetime sums past that.

use std::fmt;

/// pico-USD in one USD.
pub const PICO_PER_USD: u64 = 1_000_000_000_000;
/// pico-USD in one micro-USD, the unit of the cost metric.
const PICO_PER_MICRO: u128 = 1_000_000;
/// pico-USD in one cent.
const PICO_PER_CENT: u128 = 10_000_000_000;
/// Most decimal places an amount may have: a pico-USD is the smallest unit.
pub const MAX_DECIMALS: usize = 12;

/// An exact amount of pico-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PicoUsd(pub u128);

impl From<u64> for PicoUsd {
    fn from(pico: u64) -> Self {
        Self(u128::from(pico))
    }
}

/// Why a decimal USD amount was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseUsdError {
    /// Not digits with an optional `.` and decimals (a sign, an exponent, nothing at all…).
    Malformed,
    /// More than [`MAX_DECIMALS`] decimal places.
    TooPrecise,
    /// More pico-USD than a `u64` holds (about $18.4 million).
    TooLarge,
}

impl PicoUsd {
    /// Exact decimal USD: `"25.5"` is 25_500_000_000_000. Digits, then optionally `.` and up to
    /// [`MAX_DECIMALS`] digits; no sign, no exponent, no leading `.`; at most `u64::MAX`
    /// pico-USD, what a budget holds.
    pub fn parse(text: &str) -> Result<Self, ParseUsdError> {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ParseUsdError::Malformed);
        }
        if frac.len() > MAX_DECIMALS {
            return Err(ParseUsdError::TooPrecise);
        }
        let whole: u64 = whole.parse().map_err(|_| ParseUsdError::Malformed)?;
        // Decimals scaled to pico: "5" is 500_000_000_000, read digit by digit (at most 12).
        let frac_pico = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(MAX_DECIMALS)
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
        whole
            .checked_mul(PICO_PER_USD)
            .and_then(|w| w.checked_add(frac_pico))
            .map(Self::from)
            .ok_or(ParseUsdError::TooLarge)
    }

    /// The amount as a `u64`, saturating (counters and records hold `u64` pico-USD).
    pub fn saturating_u64(self) -> u64 {
        u64::try_from(self.0).unwrap_or(u64::MAX)
    }

    /// For messages: `$x.yz`, rounded up to the cent (what a request may cost, never less).
    pub fn rounded_up_to_cents(self) -> String {
        let cents = self.0.div_ceil(PICO_PER_CENT);
        format!("${}.{:02}", cents / 100, cents % 100)
    }

    /// Whole micro-USD in the amount, rounded down.
    pub fn whole_micro_usd(self) -> u128 {
        self.0 / PICO_PER_MICRO
    }
}

/// Exact decimal USD, every significant digit and at least two decimals: `1_500_000` pico is
/// `0.0000015`, `12_300_000_000_000` is `12.30`.
impl fmt::Display for PicoUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = u128::from(PICO_PER_USD);
        let (whole, frac) = (self.0 / scale, self.0 % scale);
        if frac == 0 {
            return write!(f, "{whole}.00");
        }
        let digits = format!("{frac:012}");
        let digits = digits.trim_end_matches('0');
        write!(f, "{whole}.{digits:0<2}")
    }
}

/// Micro-USD to add to a cost counter for a record costing `cost_pico` when the series' running
/// pico-USD total was `before_pico`: `floor((before + cost) / 1e6) - floor(before / 1e6)`.
///
/// When each record of a series gets the running total just before it (the records' intervals
/// `[before, before + cost)` tile `[0, total)`), the increments sum to exactly
/// `floor(total / 1e6)`: no rounding error accumulates however the cost is split.
pub fn micro_usd_increment(before_pico: u64, cost_pico: u64) -> u64 {
    let before = PicoUsd::from(before_pico);
    let after = PicoUsd(before.0 + u128::from(cost_pico));
    let micro = after.whole_micro_usd() - before.whole_micro_usd();
    // At most u64::MAX / 1e6 + 1: always fits.
    u64::try_from(micro).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_usd(pico: u128) -> String {
        PicoUsd(pico).to_string()
    }

    #[test]
    fn usd_is_exact() {
        assert_eq!(format_usd(0), "0.00");
        assert_eq!(format_usd(1), "0.000000000001");
        assert_eq!(format_usd(1_500_000), "0.0000015");
        assert_eq!(format_usd(12_340_000_000_000), "12.34");
        assert_eq!(format_usd(12_300_000_000_000), "12.30");
        assert_eq!(format_usd(3_000_000_000_000), "3.00");
        assert_eq!(format_usd(u64::MAX.into()), "18446744.073709551615");
        assert_eq!(
            format_usd(u128::from(u64::MAX) * 3 + 2),
            "55340232.221128654847"
        );
    }

    #[test]
    fn decimals_parse_exactly_and_format_back() {
        for (text, pico) in [
            ("25.50", 25_500_000_000_000u64),
            ("0.1", 100_000_000_000),
            ("3", 3 * PICO_PER_USD),
            ("1.", PICO_PER_USD),
            ("0.000000000001", 1),
            ("18446744.073709551615", u64::MAX),
        ] {
            assert_eq!(PicoUsd::parse(text), Ok(PicoUsd::from(pico)), "{text}");
        }
        assert_eq!(PicoUsd::from(25_500_000_000_000).to_string(), "25.50");
        for (text, why) in [
            ("-1", ParseUsdError::Malformed),
            ("1e3", ParseUsdError::Malformed),
            ("", ParseUsdError::Malformed),
            (".5", ParseUsdError::Malformed),
            ("1.2.3", ParseUsdError::Malformed),
            (" 1", ParseUsdError::Malformed),
            ("99999999999999999999999", ParseUsdError::Malformed),
            ("1.0000000000001", ParseUsdError::TooPrecise),
            ("99999999999", ParseUsdError::TooLarge),
            ("18446744.073709551616", ParseUsdError::TooLarge),
        ] {
            assert_eq!(PicoUsd::parse(text), Err(why), "{text}");
        }
    }

    #[test]
    fn messages_round_up_to_the_cent() {
        for (pico, text) in [
            (0u64, "$0.00"),
            (1, "$0.01"),
            (10_000_000_000, "$0.01"),
            (10_000_000_001, "$0.02"),
            (25_500_000_000_000, "$25.50"),
            (u64::MAX, "$18446744.08"),
        ] {
            assert_eq!(PicoUsd::from(pico).rounded_up_to_cents(), text, "{pico}");
        }
    }
}
