//! `bollinger`: a mean-reversion strategy on Bollinger bands, plugged into the shipped signals
//! service through the strategy registry.
//!
//! Per symbol it keeps the last `window` closes. A close below the lower band (mean − `k`
//! standard deviations of the closes before it) goes long, one above the upper band goes short
//! (the market is expected to revert to the mean), and a close back inside the band, edges
//! included, is flat. Until the window is full the view is flat. Strength is the close's distance
//! from the mean in half-widths, over 2, capped at 1 (just past an edge: 0.5); a band of no width
//! (every close the same) gives flat.

use crate::band::{Position, RollingBand, MAX_WINDOW};
use horizon_core::event::{Bar, Direction, StrategyView};
use horizon_core::strategy::{parse_params, ParamError, Strategy, StrategyParams};
use horizon_core::Fixed;
use serde::{Deserialize, Serialize};

/// The strategy's registered name (`[[signals.strategy]] name = "bollinger"`).
pub const NAME: &str = "bollinger";

/// `params = { window = 20, k = "2" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BollingerParams {
    /// Closes in the band, at least 2.
    pub window: u32,
    /// The band's half-width in standard deviations, positive.
    pub k: Fixed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BollingerReversion {
    band: RollingBand,
}

impl BollingerReversion {
    /// A strategy before its first bar; `params` as `from_params` checks them.
    pub fn new(params: &BollingerParams) -> BollingerReversion {
        BollingerReversion {
            band: RollingBand::new(params.window, params.k),
        }
    }

    /// Checks parameters; the error names the key.
    pub fn check(p: &BollingerParams) -> Result<(), ParamError> {
        if p.window < 2 {
            return Err(ParamError::new("window", format!("must be at least 2, got {}", p.window)));
        }
        if p.window > MAX_WINDOW {
            return Err(ParamError::new("window", format!("must be at most {MAX_WINDOW}, got {}", p.window)));
        }
        if !p.k.is_positive() {
            return Err(ParamError::new("k", format!("must be positive, got {}", p.k)));
        }
        Ok(())
    }

    /// The registry's factory for `bollinger`.
    pub fn from_params(params: &StrategyParams) -> Result<Box<dyn Strategy>, ParamError> {
        let p: BollingerParams = parse_params(params)?;
        BollingerReversion::check(&p)?;
        Ok(Box::new(BollingerReversion::new(&p)))
    }
}

impl Strategy for BollingerReversion {
    fn on_bar(&mut self, bar: &Bar) -> StrategyView {
        let (direction, strength) = match self.band.band() {
            Some(band) if band.half_width.is_positive() => {
                let direction = match band.position(bar.close) {
                    Position::Below => Direction::Long,
                    Position::Above => Direction::Short,
                    Position::Inside => Direction::Flat,
                };
                let strength = match direction {
                    Direction::Flat => Fixed::ZERO,
                    // Half-widths from the mean over 2: just past an edge 0.5, two out 1.
                    _ => band.deviation(bar.close).unwrap_or(Fixed::ONE).div_int(2).min(Fixed::ONE),
                };
                (direction, strength)
            }
            // Not full yet, or every close the same: no band to revert to.
            _ => (Direction::Flat, Fixed::ZERO),
        };
        self.band.push(bar.close);
        StrategyView {
            strategy: NAME.into(),
            direction,
            strength,
        }
    }

    fn encode_state(&self) -> Vec<u8> {
        horizon_core::snapshot::state_to_bytes(self).expect("a bollinger strategy serialises")
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = horizon_core::snapshot::state_from_bytes(bytes).ok_or("not a bollinger state")?;
        Ok(())
    }
}
