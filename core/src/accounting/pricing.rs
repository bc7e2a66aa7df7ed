//! Per-token prices of Bedrock models, and the exact cost of a request.
//!
//! Prices come from litellm's price list, vendored in `pricing/litellm-bedrock.json` and turned
//! into integer tables (`pricing/table.rs`) by `pricing/generate.py`; see `pricing/README.md`.
//! All arithmetic is on integers in pico-USD (1e-12 USD): no floating point, no rounding.
//!
//! Lookup order for `quote(region, model_id)`:
//! 1. a region-specific price for `(region, id)` ([`PriceSource::Regional`]);
//! 2. the price of `id` itself ([`PriceSource::Model`]); cross-region inference-profile IDs
//!    (`us.…`, `eu.…`, `global.…`) are separate rows with their own prices;
//! 3. the per-image price of an image model (`IMAGES`, [`Quote::per_image_pico_usd`]);
//! 4. otherwise [`MAX_CHAT_TIER`] ([`PriceSource::UnknownModel`]): over-count, never under.

use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::Usage;

/// pico-USD (1e-12 USD) per token.
///
/// In the generated table `cache_read` and `cache_write` are never zero for a model with a
/// non-zero input price: where litellm has no cache price for a model, cache tokens are charged
/// at the input price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// A higher price that applies to a whole request once its total input (input + cache read +
/// cache write tokens, [`Usage::total_input`]) is above `above_input_tokens`, as for Claude
/// Sonnet 4 / 4.5 above 200k tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub price: Price,
}

/// Where a quote's price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// A price litellm lists for this model in this region only.
    Regional,
    /// The model's (or inference profile's) own price.
    Model,
    /// Not in the table: priced at [`MAX_CHAT_TIER`]. The caller should log the model ID.
    UnknownModel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub price: Price,
    pub source: PriceSource,
    /// The model's output-token limit, when litellm knows it.
    pub max_output_tokens: Option<u32>,
    /// Long-context tier, for the few models priced higher above an input size.
    pub long_context: Option<LongContext>,
    /// pico-USD per generated image: image models (whose token prices are zero).
    pub per_image_pico_usd: Option<u64>,
}

impl Quote {
    /// The price that applies to a request with this usage: the long-context tier when the
    /// request's total input is above its threshold, `self.price` otherwise.
    pub fn price_for(&self, usage: &Usage) -> Price {
        match self.long_context {
            Some(lc) if usage.total_input() > lc.above_input_tokens => lc.price,
            _ => self.price,
        }
    }

    /// Exact cost of `usage` in pico-USD, long-context tier and images included. Prefer this
    /// to `cost(usage, &quote.price)`, which ignores both.
    pub fn cost(&self, usage: &Usage) -> u64 {
        let images = u128::from(usage.images) * u128::from(self.per_image_pico_usd.unwrap_or(0));
        let total = u128::from(cost(usage, &self.price_for(usage))).saturating_add(images);
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// An image model the gateway cannot price: billing it per token would bill nothing.
    pub fn unpriced_images(&self, model_id: &str) -> bool {
        self.per_image_pico_usd.is_none() && crate::request::model_family::makes_images(model_id)
    }
}

/// One priced model in the generated table.
#[derive(Debug)]
struct Row {
    model: &'static str,
    price: Price,
    max_output_tokens: Option<u32>,
    long_context: Option<&'static LongContext>,
}

/// Constructor used by the generated table, to keep it one line per model.
const fn row(
    model: &'static str,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    max_output_tokens: Option<u32>,
    long_context: Option<&'static LongContext>,
) -> Row {
    Row {
        model,
        price: Price {
            input,
            output,
            cache_read,
            cache_write,
        },
        max_output_tokens,
        long_context,
    }
}

// Generated: LITELLM_VERSION, MAX_CHAT_TIER, MODELS, REGIONAL, IMAGES.
include!("../../../pricing/table.rs");

/// A Bedrock service tier: Converse `serviceTier.type`, InvokeModel
/// `X-Amzn-Bedrock-Service-Tier`. Priority costs more than standard, flex less.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    /// Bedrock's `default` tier: the prices of table.rs.
    #[default]
    Standard,
    Priority,
    Flex,
}

/// A service-tier price of one model in the generated table.
#[derive(Debug)]
struct TierRow {
    model: &'static str,
    tier: ServiceTier,
    price: Price,
}

/// Constructor used by the generated table.
const fn tier_row(
    model: &'static str,
    tier: ServiceTier,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
) -> TierRow {
    TierRow {
        model,
        tier,
        price: Price {
            input,
            output,
            cache_read,
            cache_write,
        },
    }
}

// Generated: TIERS, REGIONAL_TIERS.
include!("../../../pricing/service_tiers.rs");

/// The price of `model_id` in `region` on a service tier, or `None` when litellm has no price
/// for that tier of that model (the caller refuses the request or bills it knowingly). The
/// standard tier is [`quote`]. A tier price follows the same order as [`quote`]: the region's
/// own tier price, else the model's, but a model priced for this region has no tier price
/// here unless the region has one (the model-wide tier price would be another region's).
pub fn quote_tier(region: &str, model_id: &str, tier: ServiceTier) -> Option<Quote> {
    let base = quote(region, model_id);
    if tier == ServiceTier::Standard {
        return Some(base);
    }
    let decoded = percent_decode_str(model_id).decode_utf8();
    let id = match &decoded {
        Ok(s) => resource_id(s),
        Err(_) => resource_id(model_id),
    };
    let regional = REGIONAL_TIERS
        .binary_search_by(|(r, row)| (*r, row.model, row.tier).cmp(&(region, id, tier)))
        .ok()
        .and_then(|i| REGIONAL_TIERS.get(i))
        .map(|(_, row)| (row, PriceSource::Regional));
    let model = || {
        (base.source == PriceSource::Model)
            .then(|| {
                TIERS
                    .binary_search_by(|row| (row.model, row.tier).cmp(&(id, tier)))
                    .ok()
                    .and_then(|i| TIERS.get(i))
            })
            .flatten()
            .map(|row| (row, PriceSource::Model))
    };
    let (row, source) = regional.or_else(model)?;
    Some(Quote {
        price: row.price,
        source,
        max_output_tokens: base.max_output_tokens,
        // The generator refuses a tier of a model with a long-context tier.
        long_context: None,
        per_image_pico_usd: base.per_image_pico_usd,
    })
}

impl Row {
    fn quote(&self, source: PriceSource) -> Quote {
        Quote {
            price: self.price,
            source,
            max_output_tokens: self.max_output_tokens,
            long_context: self.long_context.copied(),
            per_image_pico_usd: None,
        }
    }
}

/// Price `model_id` as sent to Bedrock in `region` (the region of the Bedrock endpoint).
///
/// `model_id` is what Tollgate sends to Bedrock: a model ID, an inference-profile ID, or an ARN
/// (`arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-…`,
/// `arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-…`); for ARNs
/// the price is that of the resource ID after the last `/`. A percent-encoded ID (as it appears
/// in the request path) is decoded first. Unknown IDs, including application-inference-profile
/// and provisioned-model ARNs, whose resource IDs are opaque, get [`MAX_CHAT_TIER`] with
/// [`PriceSource::UnknownModel`]; the caller logs them.
pub fn quote(region: &str, model_id: &str) -> Quote {
    let decoded = percent_decode_str(model_id).decode_utf8();
    let id = match &decoded {
        Ok(s) => resource_id(s),
        Err(_) => resource_id(model_id),
    };
    // `.get()`, not indexing: no panic path (and no panic formatting code in the .wasm).
    let regional = REGIONAL
        .binary_search_by(|(r, row)| (*r, row.model).cmp(&(region, id)))
        .ok()
        .and_then(|i| REGIONAL.get(i));
    if let Some((_, row)) = regional {
        return row.quote(PriceSource::Regional);
    }
    let model = MODELS
        .binary_search_by(|row| row.model.cmp(id))
        .ok()
        .and_then(|i| MODELS.get(i));
    if let Some(row) = model {
        return row.quote(PriceSource::Model);
    }
    let image = IMAGES
        .binary_search_by(|(model, _)| (*model).cmp(id))
        .ok()
        .and_then(|i| IMAGES.get(i));
    if let Some((_, per_image)) = image {
        return Quote {
            price: Price {
                input: 0,
                output: 0,
                cache_read: 0,
                cache_write: 0,
            },
            source: PriceSource::Model,
            max_output_tokens: None,
            long_context: None,
            per_image_pico_usd: Some(*per_image),
        };
    }
    Quote {
        price: MAX_CHAT_TIER,
        source: PriceSource::UnknownModel,
        max_output_tokens: None,
        long_context: None,
        per_image_pico_usd: None,
    }
}

/// The ID to price: the resource ID after the last `/` of an ARN, the input otherwise.
fn resource_id(model_id: &str) -> &str {
    if model_id.starts_with("arn:") {
        model_id.rsplit('/').next().unwrap_or(model_id)
    } else {
        model_id
    }
}

/// Exact integer cost in pico-USD; u128 internally, saturating at u64::MAX.
///
/// `usage.input_tokens` excludes cached tokens (as Bedrock reports it), so each of the four
/// token counts is charged at its own price. Cache tokens of a model litellm gives no cache
/// price are charged at its input price (the table stores the input price there), never zero.
/// This ignores a long-context tier; [`Quote::cost`] applies it.
pub fn cost(usage: &Usage, price: &Price) -> u64 {
    let parts = [
        (usage.input_tokens, price.input),
        (usage.output_tokens, price.output),
        (usage.cache_read_tokens, price.cache_read),
        (usage.cache_write_tokens, price.cache_write),
    ];
    let total = parts.iter().fold(0u128, |sum, &(tokens, per_token)| {
        sum.saturating_add(u128::from(tokens) * u128::from(per_token))
    });
    u64::try_from(total).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::accounting::money::PICO_PER_USD;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            images: 0,
        }
    }

    #[test]
    fn image_models_are_priced_per_image() {
        // litellm: Nova Canvas output_cost_per_image 0.06; Titan Image Generator v2 0.008;
        // SDXL 1.0 0.04 (1024x1024, 50 steps) and 0.08 (more steps): the higher.
        for (id, per_image) in [
            ("amazon.nova-canvas-v1:0", 60_000_000_000),
            ("us.amazon.nova-canvas-v1:0", 60_000_000_000),
            ("amazon.titan-image-generator-v2:0", 8_000_000_000),
            ("stability.stable-diffusion-xl-v1", 80_000_000_000),
            ("stability.stable-image-ultra-v1:1", 140_000_000_000),
            (
                "arn:aws:bedrock:us-west-2::foundation-model/stability.sd3-5-large-v1:0",
                80_000_000_000,
            ),
        ] {
            let q = quote("us-west-2", id);
            assert_eq!(
                (q.source, q.per_image_pico_usd),
                (PriceSource::Model, Some(per_image)),
                "{id}"
            );
            let three = Usage {
                images: 3,
                input_tokens: 1_000,
                ..Default::default()
            };
            assert_eq!(q.cost(&three), 3 * per_image, "{id}: tokens cost nothing");
            assert!(!q.unpriced_images(id));
        }
        // An image model litellm does not price cannot be billed: the gateway refuses it.
        let q = quote("us-east-1", "stability.unreleased-image-model-v9:0");
        assert_eq!(q.source, PriceSource::UnknownModel);
        assert!(q.unpriced_images("stability.unreleased-image-model-v9:0"));
        // Text models have no image price.
        let haiku = "anthropic.claude-haiku-4-5-20251001-v1:0";
        assert_eq!(quote("us-east-1", haiku).per_image_pico_usd, None);
        assert!(!quote("us-east-1", haiku).unpriced_images(haiku));
        for w in IMAGES.windows(2) {
            assert!(w[0].0 < w[1].0, "{} !< {}", w[0].0, w[1].0);
        }
    }

    fn all_rows() -> impl Iterator<Item = &'static Row> {
        MODELS.iter().chain(REGIONAL.iter().map(|(_, row)| row))
    }

    #[test]
    fn haiku_4_5_exact_integers() {
        // litellm: input_cost_per_token 0.000001, output 0.000005, cache read 1E-7,
        // cache creation 0.00000125 (USD per token) → × 1e12 pico-USD.
        let q = quote("us-east-1", "anthropic.claude-haiku-4-5-20251001-v1:0");
        assert_eq!(q.source, PriceSource::Model);
        assert_eq!(
            q.price,
            Price {
                input: 1_000_000,
                output: 5_000_000,
                cache_read: 100_000,
                cache_write: 1_250_000,
            }
        );
        assert_eq!(q.max_output_tokens, Some(64_000));
        assert_eq!(q.long_context, None);
        // $1 per million input tokens.
        assert_eq!(q.price.input * 1_000_000, PICO_PER_USD);
    }

    #[test]
    fn nova_micro_sub_micro_prices_are_exact() {
        // litellm: 3.5E-8 input, 1.4E-7 output, 8.75E-9 cache read, no cache write price.
        let q = quote("us-east-1", "amazon.nova-micro-v1:0");
        assert_eq!(
            q.price,
            Price {
                input: 35_000,
                output: 140_000,
                cache_read: 8_750,
                // no litellm price: charged at the input price
                cache_write: 35_000,
            }
        );
    }

    #[test]
    fn cross_region_profile_priced_separately() {
        // litellm: us.anthropic.claude-haiku-4-5… 0.0000011 / 0.0000055 (+10% over the base ID).
        let base = quote("us-east-1", "anthropic.claude-haiku-4-5-20251001-v1:0");
        let us = quote("us-east-1", "us.anthropic.claude-haiku-4-5-20251001-v1:0");
        let global = quote(
            "us-east-1",
            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        );
        assert_eq!(us.source, PriceSource::Model);
        assert_eq!(
            us.price,
            Price {
                input: 1_100_000,
                output: 5_500_000,
                cache_read: 110_000,
                cache_write: 1_375_000,
            }
        );
        assert_ne!(us.price, base.price);
        assert_eq!(global.price, base.price);
    }

    #[test]
    fn regional_price_wins_in_its_region_only() {
        // litellm: bedrock/us-gov-west-1/anthropic.claude-haiku-4-5-20251001-v1:0 0.0000012 / 0.000006.
        let id = "anthropic.claude-haiku-4-5-20251001-v1:0";
        let gov = quote("us-gov-west-1", id);
        assert_eq!(gov.source, PriceSource::Regional);
        assert_eq!(gov.price.input, 1_200_000);
        assert_eq!(gov.price.output, 6_000_000);
        let east = quote("us-east-1", id);
        assert_eq!(east.source, PriceSource::Model);
        assert_eq!(east.price.input, 1_000_000);

        // litellm: bedrock/eu-west-3/mistral.mistral-large-2402-v1:0 0.0000052 vs base 0.000004.
        let paris = quote("eu-west-3", "mistral.mistral-large-2402-v1:0");
        assert_eq!(paris.source, PriceSource::Regional);
        assert_eq!(paris.price.input, 5_200_000);
        assert_eq!(paris.price.output, 15_600_000);
        assert_eq!(
            quote("us-west-2", "mistral.mistral-large-2402-v1:0").source,
            PriceSource::Regional
        );
        assert_eq!(
            quote("ap-south-1", "mistral.mistral-large-2402-v1:0").source,
            PriceSource::Model
        );
    }

    #[test]
    fn route_alias_without_bare_entry_is_priced() {
        // Only litellm key: bedrock/moonshotai.kimi-k2-thinking (6E-7 / 0.0000025).
        let q = quote("us-east-1", "moonshotai.kimi-k2-thinking");
        assert_eq!(q.source, PriceSource::Regional);
        let q = quote("eu-west-1", "moonshotai.kimi-k2-thinking");
        assert_eq!(q.source, PriceSource::Model);
        assert_eq!((q.price.input, q.price.output), (600_000, 2_500_000));
    }

    #[test]
    fn arns_price_by_resource_id() {
        let base = quote("us-east-1", "anthropic.claude-sonnet-4-5-20250929-v1:0");
        let fm = quote(
            "us-east-1",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        assert_eq!(fm, base);
        let us = quote("us-east-1", "us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        let profile = quote(
            "us-east-1",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        assert_eq!(profile, us);
        assert_eq!(profile.source, PriceSource::Model);
        // As it appears percent-encoded in /model/{modelId}/converse.
        let encoded = quote(
            "us-east-1",
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-5-20250929-v1%3A0",
        );
        assert_eq!(encoded, us);
        let gov = quote(
            "us-gov-west-1",
            "arn:aws-us-gov:bedrock:us-gov-west-1::foundation-model/anthropic.claude-haiku-4-5-20251001-v1:0",
        );
        assert_eq!(gov.source, PriceSource::Regional);
        // Opaque resource IDs are unknown.
        let app = quote(
            "us-east-1",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
        );
        assert_eq!(app.source, PriceSource::UnknownModel);
    }

    #[test]
    fn unknown_models_get_max_tier_never_zero() {
        for (region, id) in [
            ("us-east-1", "anthropic.claude-does-not-exist-v1:0"),
            ("", ""),
            ("us-east-1", "arn:"),
            ("us-east-1", "arn:aws:bedrock:us-east-1::foundation-model/"),
            ("us-east-1", "/"),
            ("us-east-1", "%"),
            ("us-east-1", "%FF%FE"),
            ("us-east-1", "ünïcödé/\u{0}"),
            ("\u{10ffff}", "anthropic.claude-haiku-4-5-20251001-v1:0x"),
            ("us-east-1", "claude_platform/claude-haiku-4-5"),
            ("us-east-1", "bedrock/us-east-1/anthropic.claude-v1"),
            ("us-east-1", "twelvelabs.pegasus-1-2-v1:0"),
        ] {
            let q = quote(region, id);
            assert_eq!(q.source, PriceSource::UnknownModel, "{region:?} {id:?}");
            assert_eq!(q.price, MAX_CHAT_TIER);
            assert_eq!(q.max_output_tokens, None);
        }
        let m = MAX_CHAT_TIER;
        assert!(m.input > 0 && m.output > 0 && m.cache_read > 0 && m.cache_write > 0);
    }

    #[test]
    fn max_tier_dominates_every_row() {
        // Generated over chat rows only; today no other row is pricier, so check them all.
        let m = MAX_CHAT_TIER;
        for row in all_rows() {
            let tiers = [Some(row.price), row.long_context.map(|lc| lc.price)];
            for p in tiers.into_iter().flatten() {
                assert!(
                    p.input <= m.input
                        && p.output <= m.output
                        && p.cache_read <= m.cache_read
                        && p.cache_write <= m.cache_write,
                    "{} {:?} exceeds MAX_CHAT_TIER",
                    row.model,
                    p
                );
            }
        }
        // Claude Mythos Preview (0.0000275 / 0.0001375) is the priciest chat model in 1.109.1.
        assert_eq!(m.input, 27_500_000);
        assert_eq!(m.output, 137_500_000);
    }

    #[test]
    fn cache_prices_never_zero_when_input_is_priced() {
        for row in all_rows() {
            let p = row.price;
            if p.input > 0 {
                assert!(p.cache_read > 0 && p.cache_write > 0, "{}", row.model);
            }
        }
        // Llama has no cache prices in litellm: charged at the input price.
        let q = quote("us-east-1", "meta.llama3-3-70b-instruct-v1:0");
        assert_eq!(q.price.cache_read, q.price.input);
        assert_eq!(q.price.cache_write, q.price.input);
    }

    #[test]
    fn cost_with_cache_tokens() {
        let price = quote("us-east-1", "anthropic.claude-haiku-4-5-20251001-v1:0").price;
        let u = usage(1_000, 500, 20_000, 3_000);
        // 1000×1_000_000 + 500×5_000_000 + 20000×100_000 + 3000×1_250_000
        let want = 1_000_000_000 + 2_500_000_000 + 2_000_000_000 + 3_750_000_000;
        assert_eq!(cost(&u, &price), want);
        assert_eq!(want, 9_250_000_000); // $0.00925
        assert_eq!(cost(&Usage::default(), &price), 0);
        assert_eq!(cost(&usage(0, 0, 1, 0), &price), 100_000);
    }

    #[test]
    fn cost_saturates_on_huge_counts() {
        let max = Price {
            input: u64::MAX,
            output: u64::MAX,
            cache_read: u64::MAX,
            cache_write: u64::MAX,
        };
        let huge = usage(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(cost(&huge, &max), u64::MAX);
        assert_eq!(cost(&huge, &MAX_CHAT_TIER), u64::MAX);
        assert_eq!(cost(&usage(u64::MAX, 0, 0, 0), &MAX_CHAT_TIER), u64::MAX);
        // Just below the limit is still exact.
        let one = Price {
            input: 1,
            output: 0,
            cache_read: 0,
            cache_write: 0,
        };
        assert_eq!(cost(&usage(u64::MAX, 7, 7, 7), &one), u64::MAX);
        assert_eq!(cost(&usage(u64::MAX - 1, 0, 0, 0), &one), u64::MAX - 1);
    }

    #[test]
    fn long_context_tier_applies_above_threshold() {
        // litellm: claude-sonnet-4-5 input 0.000003 → 0.000006 above 200k tokens.
        let q = quote("us-east-1", "anthropic.claude-sonnet-4-5-20250929-v1:0");
        let lc = q.long_context.expect("sonnet 4.5 has a long-context tier");
        assert_eq!(lc.above_input_tokens, 200_000);
        assert_eq!(lc.price.input, 6_000_000);
        assert_eq!(lc.price.output, 22_500_000);
        // 200_000 total input is not above the threshold.
        let at = usage(100_000, 10, 50_000, 50_000);
        assert_eq!(q.price_for(&at), q.price);
        assert_eq!(q.cost(&at), cost(&at, &q.price));
        // Cache tokens count toward the threshold.
        let above = usage(100_000, 10, 50_000, 50_001);
        assert_eq!(q.price_for(&above), lc.price);
        assert_eq!(q.cost(&above), cost(&above, &lc.price));
        // No tier: always the base price.
        let h = quote("us-east-1", "anthropic.claude-haiku-4-5-20251001-v1:0");
        let big = usage(1_000_000, 0, 0, 0);
        assert_eq!(h.cost(&big), cost(&big, &h.price));
    }

    #[test]
    fn tables_are_sorted_and_unique() {
        for w in MODELS.windows(2) {
            assert!(w[0].model < w[1].model, "{} !< {}", w[0].model, w[1].model);
        }
        for w in REGIONAL.windows(2) {
            let (a, b) = ((w[0].0, w[0].1.model), (w[1].0, w[1].1.model));
            assert!(a < b, "{a:?} !< {b:?}");
        }
        // Every row is found by the same binary search quote() uses.
        for row in MODELS {
            assert_eq!(
                quote("xx-none-0", row.model).price,
                row.price,
                "{}",
                row.model
            );
        }
        for (region, row) in REGIONAL {
            let q = quote(region, row.model);
            assert_eq!((q.source, q.price), (PriceSource::Regional, row.price));
        }
    }

    #[test]
    fn service_tiers_have_their_own_prices() {
        // litellm: amazon.nova-pro-v1:0 priority 1.4E-6 / 5.6E-6, cache read 3.5E-7;
        // flex 4E-7 / 1.6E-6, cache read 1E-7; standard 8E-7 / 3.2E-6.
        let id = "amazon.nova-pro-v1:0";
        let standard = quote_tier("us-east-1", id, ServiceTier::Standard).unwrap();
        assert_eq!(standard, quote("us-east-1", id));
        let priority = quote_tier("us-east-1", id, ServiceTier::Priority).unwrap();
        assert_eq!(
            priority.price,
            Price {
                input: 1_400_000,
                output: 5_600_000,
                cache_read: 350_000,
                // no litellm price: the tier's input price
                cache_write: 1_400_000,
            }
        );
        assert_eq!(priority.source, PriceSource::Model);
        assert_eq!(priority.max_output_tokens, standard.max_output_tokens);
        let flex = quote_tier("us-east-1", id, ServiceTier::Flex).unwrap();
        assert_eq!((flex.price.input, flex.price.output), (400_000, 1_600_000));
        // No tier price: None, never the standard price.
        let haiku = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
        assert_eq!(quote_tier("us-east-1", haiku, ServiceTier::Priority), None);
        assert_eq!(
            quote_tier("us-east-1", "us.example.unknown-v1:0", ServiceTier::Flex),
            None
        );
        // Region-only prices: bedrock/ap-south-1/deepseek.v3.2 has its own flex price.
        let regional = quote_tier("ap-south-1", "deepseek.v3.2", ServiceTier::Flex).unwrap();
        assert_eq!(regional.source, PriceSource::Regional);
    }

    #[test]
    fn tier_tables_are_sorted_and_unique() {
        for w in TIERS.windows(2) {
            let (a, b) = ((w[0].model, w[0].tier), (w[1].model, w[1].tier));
            assert!(a < b, "{a:?} !< {b:?}");
        }
        for w in REGIONAL_TIERS.windows(2) {
            let (a, b) = (
                (w[0].0, w[0].1.model, w[0].1.tier),
                (w[1].0, w[1].1.model, w[1].1.tier),
            );
            assert!(a < b, "{a:?} !< {b:?}");
        }
        for row in TIERS {
            assert_ne!(row.tier, ServiceTier::Standard);
            assert!(quote("xx-none-0", row.model).source == PriceSource::Model);
        }
    }

    #[test]
    fn source_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&PriceSource::UnknownModel).unwrap(),
            "\"unknown_model\""
        );
        assert_eq!(
            serde_json::to_string(&PriceSource::Regional).unwrap(),
            "\"regional\""
        );
        assert!(!LITELLM_VERSION.is_empty());
    }
}
