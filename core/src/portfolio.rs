//! The portfolio aggregate: positions, cash, fees, realised and unrealised P&L.
//!
//! Decide and evolve are separate: `plan` is a pure function of the state and the targets that
//! returns the fills a rebalance would assume; `apply` evolves the state by one fill. Replaying
//! the fills of every PORTFOLIO_REBALANCED event rebuilds the aggregate. Long only: weights are
//! in [0, 1] and cash never goes negative.

use crate::event::{Fill, Position, Rebalance, RebalanceReason, Side};
use crate::fixed::Fixed;
use crate::scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct PortfolioConfig {
    pub id: String,
    pub cash: Fixed,
    pub fee_bps: i64,
    pub slippage_bps: i64,
    pub rebalance_band: Fixed,
    pub min_notional: Fixed,
    pub lots: BTreeMap<String, Fixed>,
}

impl PortfolioConfig {
    pub fn from_scenario(s: &Scenario) -> PortfolioConfig {
        PortfolioConfig {
            id: s.portfolio.id.clone(),
            cash: s.portfolio.cash,
            fee_bps: s.portfolio.fee_bps,
            slippage_bps: s.portfolio.slippage_bps,
            rebalance_band: s.portfolio.rebalance_band,
            min_notional: s.portfolio.min_notional,
            lots: s.market.symbols.iter().map(|x| (x.symbol.clone(), x.lot)).collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Holding {
    pub quantity: Fixed,
    pub avg_price: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Portfolio {
    pub id: String,
    pub cash: Fixed,
    pub holdings: BTreeMap<String, Holding>,
    pub marks: BTreeMap<String, Fixed>,
    pub realized_pnl: Fixed,
    pub fees: Fixed,
}

impl Portfolio {
    pub fn new(id: &str, cash: Fixed) -> Portfolio {
        Portfolio {
            id: id.to_string(),
            cash,
            holdings: BTreeMap::new(),
            marks: BTreeMap::new(),
            realized_pnl: Fixed::ZERO,
            fees: Fixed::ZERO,
        }
    }

    pub fn mark(&mut self, symbol: &str, price: Fixed) {
        self.marks.insert(symbol.to_string(), price);
    }

    fn market_value(&self, symbol: &str) -> Fixed {
        let q = self.holdings.get(symbol).map(|h| h.quantity).unwrap_or(Fixed::ZERO);
        q.mul(self.marks.get(symbol).copied().unwrap_or(Fixed::ZERO))
    }

    /// Cash plus holdings at their marks.
    pub fn value(&self) -> Fixed {
        self.cash + self.holdings.keys().map(|s| self.market_value(s)).sum()
    }

    pub fn unrealized_pnl(&self) -> Fixed {
        self.holdings
            .iter()
            .map(|(s, h)| h.quantity.mul(self.marks.get(s).copied().unwrap_or(h.avg_price) - h.avg_price))
            .sum()
    }

    /// Each holding's share of portfolio value.
    pub fn weights(&self) -> BTreeMap<String, Fixed> {
        let v = self.value();
        self.holdings
            .keys()
            .map(|s| (s.clone(), self.market_value(s).div(v).unwrap_or(Fixed::ZERO)))
            .collect()
    }

    /// The fills that bring every symbol with a mark toward its target weight. Only symbols off
    /// target by more than the band trade, unless `force`. Sells come first so their proceeds
    /// fund the buys; buys are cut to the cash available.
    pub fn plan(&self, targets: &BTreeMap<String, Fixed>, config: &PortfolioConfig, force: bool) -> Vec<Fill> {
        let value = self.value();
        if !value.is_positive() {
            return Vec::new();
        }
        let weights = self.weights();
        let mut sells = Vec::new();
        let mut buys = Vec::new();
        for (symbol, mark) in &self.marks {
            let target = targets.get(symbol).copied().unwrap_or(Fixed::ZERO);
            let current = weights.get(symbol).copied().unwrap_or(Fixed::ZERO);
            let drift = (target - current).abs();
            if drift.is_zero() || (!force && drift <= config.rebalance_band) {
                continue;
            }
            let lot = config.lots.get(symbol).copied().unwrap_or(Fixed::from_units(1));
            let held = self.holdings.get(symbol).map(|h| h.quantity).unwrap_or(Fixed::ZERO);
            let delta_value = target.mul(value) - self.market_value(symbol);
            if delta_value.is_negative() {
                let price = *mark - mark.bps(config.slippage_bps);
                let quantity = if target.is_zero() {
                    held
                } else {
                    floor_to(delta_value.abs().div(price).unwrap_or(Fixed::ZERO), lot).min(held)
                };
                sells.push((symbol.clone(), quantity, price));
            } else {
                let price = *mark + mark.bps(config.slippage_bps);
                buys.push((
                    symbol.clone(),
                    floor_to(delta_value.div(price).unwrap_or(Fixed::ZERO), lot),
                    price,
                    lot,
                ));
            }
        }
        let mut fills = Vec::new();
        let mut cash = self.cash;
        for (symbol, quantity, price) in sells {
            let notional = quantity.mul(price);
            if quantity.is_positive() && notional >= config.min_notional {
                let fee = notional.bps(config.fee_bps);
                cash += notional - fee;
                fills.push(Fill {
                    symbol,
                    side: Side::Sell,
                    quantity,
                    price,
                    fee,
                });
            }
        }
        for (symbol, mut quantity, price, lot) in buys {
            let cost_per_unit = price + price.bps(config.fee_bps);
            let affordable = floor_to(cash.div(cost_per_unit).unwrap_or(Fixed::ZERO), lot);
            quantity = quantity.min(affordable);
            let notional = quantity.mul(price);
            if quantity.is_positive() && notional >= config.min_notional {
                let fee = notional.bps(config.fee_bps);
                cash -= notional + fee;
                fills.push(Fill {
                    symbol,
                    side: Side::Buy,
                    quantity,
                    price,
                    fee,
                });
            }
        }
        fills
    }

    /// Evolves the state by one fill.
    pub fn apply(&mut self, fill: &Fill) {
        let notional = fill.quantity.mul(fill.price);
        let h = self.holdings.entry(fill.symbol.clone()).or_default();
        match fill.side {
            Side::Buy => {
                let new_qty = h.quantity + fill.quantity;
                h.avg_price = (h.avg_price.mul(h.quantity) + notional).div(new_qty).unwrap_or(fill.price);
                h.quantity = new_qty;
                self.cash -= notional + fill.fee;
            }
            Side::Sell => {
                self.realized_pnl += (fill.price - h.avg_price).mul(fill.quantity);
                h.quantity -= fill.quantity;
                self.cash += notional - fill.fee;
                if h.quantity.is_zero() {
                    self.holdings.remove(&fill.symbol);
                }
            }
        }
        self.fees += fill.fee;
    }

    /// The event payload describing the state after `fills`.
    pub fn rebalanced(&self, reason: RebalanceReason, fills: Vec<Fill>) -> Rebalance {
        Rebalance {
            portfolio_id: self.id.clone(),
            reason,
            fills,
            positions: self
                .holdings
                .iter()
                .map(|(s, h)| Position {
                    symbol: s.clone(),
                    quantity: h.quantity,
                    avg_price: h.avg_price,
                    mark_price: self.marks.get(s).copied().unwrap_or(h.avg_price),
                })
                .collect(),
            cash: self.cash,
            value: self.value(),
            realized_pnl: self.realized_pnl,
            unrealized_pnl: self.unrealized_pnl(),
            fees: self.fees,
        }
    }
}

fn floor_to(x: Fixed, lot: Fixed) -> Fixed {
    if !lot.is_positive() {
        return x;
    }
    Fixed::from_units(x.units() / lot.units() * lot.units())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(s: &str) -> Fixed {
        s.parse().unwrap()
    }

    fn config() -> PortfolioConfig {
        PortfolioConfig {
            id: "p".into(),
            cash: fx("10000"),
            fee_bps: 10,
            slippage_bps: 0,
            rebalance_band: fx("0.05"),
            min_notional: fx("1"),
            lots: [("BTC".to_string(), fx("0.001"))].into_iter().collect(),
        }
    }

    fn targets(w: &str) -> BTreeMap<String, Fixed> {
        [("BTC".to_string(), fx(w))].into_iter().collect()
    }

    #[test]
    fn given_cash_when_targeting_half_then_it_buys_half_in_lots_and_pays_fees() {
        let mut p = Portfolio::new("p", fx("10000"));
        p.mark("BTC", fx("100"));
        let fills = p.plan(&targets("0.5"), &config(), false);
        assert_eq!(
            fills,
            vec![Fill {
                symbol: "BTC".into(),
                side: Side::Buy,
                quantity: fx("50"),
                price: fx("100"),
                fee: fx("5")
            }]
        );
        fills.iter().for_each(|f| p.apply(f));
        assert_eq!((p.cash, p.value(), p.fees), (fx("4995"), fx("9995"), fx("5")));
    }

    #[test]
    fn drift_inside_the_band_does_not_trade_unless_forced() {
        let mut p = Portfolio::new("p", fx("10000"));
        p.mark("BTC", fx("100"));
        p.plan(&targets("0.5"), &config(), false).iter().for_each(|f| p.apply(f));
        assert!(p.plan(&targets("0.52"), &config(), false).is_empty());
        assert!(!p.plan(&targets("0.52"), &config(), true).is_empty());
    }

    #[test]
    fn selling_above_cost_realises_profit() {
        let mut p = Portfolio::new("p", fx("10000"));
        p.mark("BTC", fx("100"));
        p.plan(&targets("0.5"), &config(), false).iter().for_each(|f| p.apply(f));
        p.mark("BTC", fx("120"));
        assert_eq!(p.unrealized_pnl(), fx("1000"));
        let fills = p.plan(&targets("0"), &config(), false);
        assert_eq!((fills[0].side, fills[0].quantity), (Side::Sell, fx("50")));
        fills.iter().for_each(|f| p.apply(f));
        assert_eq!((p.realized_pnl, p.unrealized_pnl()), (fx("1000"), Fixed::ZERO));
        assert!(p.holdings.is_empty());
    }

    #[test]
    fn buys_never_spend_more_than_the_cash() {
        let mut p = Portfolio::new("p", fx("100"));
        p.mark("BTC", fx("100"));
        let fills = p.plan(&targets("1"), &config(), true);
        fills.iter().for_each(|f| p.apply(f));
        assert!(!p.cash.is_negative(), "cash {}", p.cash);
    }
}
