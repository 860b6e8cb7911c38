//! Rotary position embedding parameters, in both generations of Hugging Face config syntax:
//! top-level `rope_theta` + `rope_scaling` (published checkpoints) and `rope_parameters`
//! (current transformers), with `type` or `rope_type` naming the scaling.

use serde_json::Value;

use super::{ConfigError, ConfigSource};

/// How the rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama-3 style: low frequencies scaled by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (DeepSeek-V3): interpolation/extrapolation ramp plus an attention factor.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

fn num(obj: &serde_json::Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key).and_then(Value::as_f64)
}

impl RopeConfig {
    /// Reads the rope settings of `src`. `default_theta` applies when the config names none.
    pub fn parse(src: &ConfigSource, default_theta: f64) -> Result<Self, ConfigError> {
        // `rope_parameters` (transformers >= 5) may be one dict or one per attention type.
        let params = match src.raw("rope_parameters") {
            Some(Value::Object(o)) => match o.get("full_attention") {
                Some(Value::Object(inner)) => Some(("rope_parameters", inner.clone())),
                _ => Some(("rope_parameters", o.clone())),
            },
            Some(_) => return Err(src.invalid("rope_parameters", "expected an object")),
            None => None,
        };
        let scaling_obj = match (params.clone(), src.raw("rope_scaling")) {
            (Some(p), _) => Some(p),
            (None, Some(Value::Object(o))) => Some(("rope_scaling", o.clone())),
            (None, Some(_)) => return Err(src.invalid("rope_scaling", "expected an object")),
            (None, None) => None,
        };
        let theta = match src.opt::<f64>("rope_theta")? {
            Some(t) => t,
            None => params
                .as_ref()
                .and_then(|(_, o)| num(o, "rope_theta"))
                .unwrap_or(default_theta),
        };
        if theta.is_nan() || theta <= 0.0 {
            return Err(src.invalid("rope_theta", "must be positive"));
        }
        let Some((field, obj)) = scaling_obj else {
            return Ok(Self {
                theta,
                scaling: RopeScaling::None,
            });
        };
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let need = |key: &str| {
            num(&obj, key).ok_or_else(|| src.invalid(field, format!("missing number `{key}`")))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?,
            },
            "yarn" => {
                let max_pos: Option<f64> = src.opt("max_position_embeddings")?;
                let orig = num(&obj, "original_max_position_embeddings");
                // Like transformers: when the original context is given, the ratio of the
                // context lengths is the effective factor.
                let factor = match (orig, max_pos) {
                    (Some(o), Some(m)) if o > 0.0 => m / o,
                    _ => need("factor")?,
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: orig.or(max_pos).ok_or_else(|| {
                        src.invalid(field, "yarn needs original_max_position_embeddings")
                    })?,
                    beta_fast: num(&obj, "beta_fast").unwrap_or(32.0),
                    beta_slow: num(&obj, "beta_slow").unwrap_or(1.0),
                    mscale: num(&obj, "mscale"),
                    mscale_all_dim: num(&obj, "mscale_all_dim"),
                    attention_factor: num(&obj, "attention_factor"),
                    truncate: obj.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            other => {
                return Err(src.invalid(field, format!("unsupported rope type `{other}`")));
            }
        };
        Ok(Self { theta, scaling })
    }

    /// Inverse frequencies for a rotary dimension `dim` (even), and the factor by which cos and
    /// sin are multiplied (1 except for YaRN).
    pub fn inv_freq(&self, dim: usize) -> (Vec<f32>, f32) {
        let half = dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::None => (base.iter().map(|&f| f as f32).collect(), 1.0),
            RopeScaling::Linear { factor } => {
                (base.iter().map(|&f| (f / factor) as f32).collect(), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let f = base
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .map(|f| f as f32)
                    .collect();
                (f, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let att = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *a)
                    }
                    _ => get_mscale(*factor, 1.0),
                });
                let d = dim as f64;
                let corr = |rot: f64| {
                    (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(d - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let f = base
                    .iter()
                    .enumerate()
                    .map(|(i, &extra)| {
                        let inter = extra / factor;
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        (inter * (1.0 - extra_factor) + extra * extra_factor) as f32
                    })
                    .collect();
                (f, att as f32)
            }
        }
    }

    /// DeepSeek's softmax-scale correction under YaRN: `mscale(factor, mscale_all_dim)^2`.
    pub fn yarn_softmax_scale(&self) -> f64 {
        match &self.scaling {
            RopeScaling::Yarn {
                factor,
                mscale_all_dim: Some(m),
                ..
            } if *m != 0.0 && *factor > 1.0 => {
                let s = 0.1 * m * factor.ln() + 1.0;
                s * s
            }
            _ => 1.0,
        }
    }
}
