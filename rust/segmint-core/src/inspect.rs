//! Questions about the engine's state that marketers ask and batch
//! systems cannot answer: why is this user in (or out of) this audience,
//! who would a new rule select, how do audiences overlap, what do we know
//! about a user.

use std::borrow::Cow;
use std::fmt::Write;

use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::{AudId, CExpr, Catalog, CmpOp, RuleExpr, StrOp, WindowDef};
use crate::engine::Engine;
use crate::error::{Result, SegmintError};
use crate::eval::{computed_value, eval_bool, eval_rule, eval_value, Env, UserEnv};
use crate::profile::UserData;
use crate::state::render;
use crate::time::{format_duration, Millis};
use crate::value::Value;

/// One node of an explanation: the expression, its value for the user now,
/// and what a comparison needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainNode {
    /// The expression as rule text.
    pub expr: String,
    /// Its value now, rendered (`2`, `"skincare"`, `3h`, `null`, `true`).
    pub value: String,
    /// For conditions: whether it holds.
    pub holds: Option<bool>,
    /// For comparisons of a value with a constant: what it needs (`>= 3`).
    pub needs: Option<String>,
    /// Sub-expressions. A `computed.KEY` node has one child: the computed
    /// trait's value expression, explained the same way.
    pub children: Vec<ExplainNode>,
    /// For a `computed.KEY` node: the next instant at which time alone (a
    /// window lapsing, a future event becoming visible) changes the computed
    /// trait's value, if any within a year. `None` on other nodes.
    pub next_change: Option<Millis>,
}

/// Why a user is (or is not) in an audience.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The audience key.
    pub audience: String,
    /// The user id: the profile's own, also when asked by another id that
    /// names it (see `Engine::alias`).
    pub user_id: String,
    /// The rule text.
    pub rule: String,
    /// Whether the user is a member now.
    pub member: bool,
    /// When the user entered, if a member.
    pub entered_at: Option<Millis>,
    /// The instant the engine's clock stands at.
    pub now: Millis,
    /// The rule as a tree of values.
    pub tree: ExplainNode,
    /// The next instant at which time alone changes the result (assuming no
    /// new events and unchanged memberships of referenced audiences), if any
    /// within a year.
    pub next_change: Option<Millis>,
}

/// What a rule would select, against live state, without saving anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// How many profiles match.
    pub size: u64,
    /// Up to `sample` matching user ids (smallest dense ids first).
    pub sample: Vec<String>,
    /// When replacing an audience: who would enter.
    pub entering: Vec<String>,
    /// When replacing an audience: who would exit.
    pub exiting: Vec<String>,
    /// Profiles evaluated.
    pub profiles: u64,
}

/// Sizes of audiences and of their intersections, exact, from the bitmaps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    /// The audience keys, in the order asked.
    pub audiences: Vec<String>,
    /// Size of each.
    pub sizes: Vec<u64>,
    /// `pairwise[i][j]`: size of the intersection of audiences i and j.
    pub pairwise: Vec<Vec<u64>>,
    /// Size of the intersection of all of them.
    pub all: u64,
}

/// What the engine knows about one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The user id: the profile's own, also when asked by another id that
    /// names it (see `Engine::alias`).
    pub user_id: String,
    /// Traits by dotted key, sorted.
    pub traits: Vec<(String, serde_json::Value)>,
    /// Audiences the user is in, with the instant of entry, sorted by key.
    pub audiences: Vec<(String, Millis)>,
    /// Computed traits with a (non-null) value, sorted by key.
    pub computed: Vec<(String, serde_json::Value)>,
}

/// Renders a compiled expression back as rule text.
pub fn render_expr(cat: &Catalog, e: &CExpr) -> String {
    let mut out = String::new();
    write_expr(cat, e, &mut out);
    out
}

fn write_literal(v: &Value, out: &mut String) {
    match v {
        Value::Dur(d) => out.push_str(&format_duration(*d)),
        other => out.push_str(&render(other)),
    }
}

fn write_selector(cat: &Catalog, state: u32, out: &mut String) {
    let def = &cat.states[state as usize];
    let _ = write!(out, "{:?}", def.event.as_ref());
    if let Some(filter) = &def.filter {
        out.push_str(" where ");
        write_expr(cat, filter, out);
    }
}

fn write_expr(cat: &Catalog, e: &CExpr, out: &mut String) {
    let aud_key = |a: &u32| cat.key_of(*a).to_owned();
    match e {
        CExpr::Lit(v) => write_literal(v, out),
        CExpr::Trait(k) => {
            let _ = write!(out, "trait.{}", cat.trait_keys.name(*k));
        }
        CExpr::Property(p) => out.push_str(p),
        CExpr::View(v) => {
            let view = cat.views[*v as usize];
            let _ = write!(out, "{}(", view.func.name());
            write_selector(cat, view.state, out);
            if let Some(p) = &cat.states[view.state as usize].property {
                let _ = write!(out, ", {p}");
            }
            match view.window {
                WindowDef::All => {}
                WindowDef::Last(w) => {
                    let _ = write!(out, ", {}", format_duration(w));
                }
                WindowDef::Since(anchor) => {
                    out.push_str(", since ");
                    write_selector(cat, anchor, out);
                }
            }
            out.push(')');
        }
        CExpr::SinceEvent(s) => {
            out.push_str("since(");
            write_selector(cat, *s, out);
            out.push(')');
        }
        CExpr::SinceTrait(k) => {
            let _ = write!(out, "since(trait.{})", cat.trait_keys.name(*k));
        }
        CExpr::MemberFor(a) => {
            let _ = write!(out, "member_for({:?})", aud_key(a));
        }
        CExpr::InAudience(a) => {
            let _ = write!(out, "in_audience({:?})", aud_key(a));
        }
        CExpr::Computed(c) => {
            let _ = write!(out, "computed.{}", cat.computed_key_of(*c));
        }
        CExpr::Exists(x) => {
            out.push_str("exists(");
            write_expr(cat, x, out);
            out.push(')');
        }
        CExpr::Not(x) => {
            out.push_str("not ");
            write_grouped(cat, x, out);
        }
        CExpr::And(xs) | CExpr::Or(xs) => {
            let sep = if matches!(e, CExpr::And(_)) {
                " and "
            } else {
                " or "
            };
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                write_grouped(cat, x, out);
            }
        }
        CExpr::Neg(x) => {
            out.push('-');
            write_grouped(cat, x, out);
        }
        CExpr::Arith(op, a, b) => {
            write_grouped(cat, a, out);
            let sym = match op {
                crate::catalog::ArithOp::Add => " + ",
                crate::catalog::ArithOp::Sub => " - ",
                crate::catalog::ArithOp::Mul => " * ",
                crate::catalog::ArithOp::Div => " / ",
            };
            out.push_str(sym);
            write_grouped(cat, b, out);
        }
        CExpr::Cmp(op, a, b) => {
            write_expr(cat, a, out);
            let _ = write!(out, " {} ", op.symbol());
            write_expr(cat, b, out);
        }
        CExpr::In(x, list, negated) => {
            write_expr(cat, x, out);
            out.push_str(if *negated { " not in [" } else { " in [" });
            for (i, v) in list.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_literal(v, out);
            }
            out.push(']');
        }
        CExpr::Between(x, lo, hi, negated) => {
            write_expr(cat, x, out);
            out.push_str(if *negated {
                " not between "
            } else {
                " between "
            });
            write_expr(cat, lo, out);
            out.push_str(" and ");
            write_expr(cat, hi, out);
        }
        CExpr::Str(op, a, b) => {
            write_expr(cat, a, out);
            out.push_str(match op {
                StrOp::Contains => " contains ",
                StrOp::StartsWith => " starts_with ",
                StrOp::EndsWith => " ends_with ",
            });
            write_expr(cat, b, out);
        }
    }
}

fn write_grouped(cat: &Catalog, e: &CExpr, out: &mut String) {
    let compound = matches!(
        e,
        CExpr::And(_)
            | CExpr::Or(_)
            | CExpr::Cmp(..)
            | CExpr::Between(..)
            | CExpr::In(..)
            | CExpr::Arith(..)
    );
    if compound {
        out.push('(');
    }
    write_expr(cat, e, out);
    if compound {
        out.push(')');
    }
}

fn render_value(v: &Option<Value>) -> String {
    match v {
        None => "null".into(),
        Some(Value::Dur(d)) => format_duration(*d),
        Some(v) => render(v),
    }
}

fn is_condition(e: &CExpr) -> bool {
    e.is_boolean_operator() || matches!(e, CExpr::InAudience(_))
}

fn explain_node(cat: &Catalog, e: &CExpr, env: &UserEnv<'_>) -> ExplainNode {
    let children = crate::catalog::children(e);
    let needs = match e {
        CExpr::Cmp(op, a, b) => match (&**a, &**b) {
            (_, CExpr::Lit(v)) if !matches!(&**a, CExpr::Lit(_)) => {
                Some(format!("{} {}", op.symbol(), lit(v)))
            }
            (CExpr::Lit(v), _) => Some(format!("{} {}", flip(*op).symbol(), lit(v))),
            _ => None,
        },
        CExpr::Between(_, lo, hi, negated) => match (&**lo, &**hi) {
            (CExpr::Lit(l), CExpr::Lit(h)) => Some(format!(
                "{}between {} and {}",
                if *negated { "not " } else { "" },
                lit(l),
                lit(h)
            )),
            _ => None,
        },
        _ => None,
    };
    let (value, holds) = if is_condition(e) {
        let b = eval_bool(e, env);
        (b.to_string(), Some(b))
    } else {
        (render_value(&eval_value(e, env)), None)
    };
    let mut children: Vec<ExplainNode> = children
        .into_iter()
        .filter(|c| !matches!(c, CExpr::Lit(_)))
        .map(|c| explain_node(cat, c, env))
        .collect();
    let mut next_change = None;
    if let CExpr::Computed(ct) = e {
        if let Some(def) = cat.computed.get(*ct as usize).and_then(Option::as_ref) {
            children.push(explain_node(cat, &def.expr, env));
            next_change = computed_next_change(&def.expr, env);
        }
    }
    ExplainNode {
        expr: render_expr(cat, e),
        value,
        holds,
        needs,
        children,
        next_change,
    }
}

/// How far ahead explain looks for a change by time alone.
const HORIZON: Millis = 366 * 86_400_000;
/// At most this many candidate instants are tried.
const MAX_STEPS: usize = 10_000;

/// The user at another instant.
fn at<'a>(env: &UserEnv<'a>, now: Millis) -> UserEnv<'a> {
    env.at(now)
}

/// The first instant after now at which the value of a computed trait's
/// expression differs from its value now: steps through the instants at
/// which it may change (the instants the engine's computed-trait timer fires).
fn computed_next_change(expr: &CExpr, env: &UserEnv<'_>) -> Option<Millis> {
    let now_value = eval_value(expr, env);
    let horizon = env.now + HORIZON;
    let mut t = env.now;
    for _ in 0..MAX_STEPS {
        t = at(env, t).next_change(expr).filter(|&n| n <= horizon)?;
        if eval_value(expr, &at(env, t)) != now_value {
            return Some(t);
        }
    }
    None
}

/// A user at an instant, with every `computed.KEY` read as its expression
/// evaluated at that instant: the value the engine's computed-trait timers
/// keep by then (at the current instant it equals the kept value).
struct FreshEnv<'a, 'b>(&'b UserEnv<'a>);

impl Env for FreshEnv<'_, '_> {
    fn leaf(&self, e: &CExpr) -> Option<Cow<'_, Value>> {
        match e {
            CExpr::Computed(ct) => computed_value(self.0.cat, *ct, self.0).map(Cow::Owned),
            other => self.0.leaf(other),
        }
    }

    fn in_audience(&self, aud: AudId) -> bool {
        self.0.in_audience(aud)
    }
}

fn lit(v: &Value) -> String {
    let mut s = String::new();
    write_literal(v, &mut s);
    s
}

fn flip(op: CmpOp) -> CmpOp {
    op.flipped()
}

/// One shard's part of a preview (dense ids).
struct ShardPreview {
    size: u64,
    profiles: u64,
    sample: Vec<u32>,
    entering: Vec<u32>,
    exiting: Vec<u32>,
}

fn rule_holds<E: Env>(cat: &Catalog, rule: &RuleExpr, env: &E) -> bool {
    eval_rule(rule, &mut |a| eval_bool(&cat.atoms[a as usize].expr, env))
}

impl Engine {
    fn user_data(&self, user_id: &str) -> Result<(u32, &UserData)> {
        let unknown = || SegmintError::UnknownUser {
            user_id: user_id.to_owned(),
        };
        let uid = self.interner.get(user_id).ok_or_else(unknown)?;
        let user = self.shard_of(uid).user(uid).ok_or_else(unknown)?;
        Ok((uid, user))
    }

    /// Explains a membership: the rule as a tree of values for this user now,
    /// and when time alone would change the result.
    pub fn explain(&self, user_id: &str, audience: &str) -> Result<Explanation> {
        let cat = &*self.catalog;
        let slot = cat.audience(audience)?;
        let def =
            cat.audiences[slot as usize]
                .as_ref()
                .ok_or_else(|| SegmintError::UnknownAudience {
                    key: audience.to_owned(),
                })?;
        let (uid, user) = self.user_data(user_id)?;
        let members = &self.shard_of(uid).members;
        let g = self.config.granularity;
        let env = UserEnv::new(cat, user, self.now, g).with_shared(members);
        let tree = explain_node(cat, &def.expr, &env);
        // Step through the instants at which an atom (or a computed trait the
        // rule reads) may change until the rule flips; computed traits are
        // read as their timers would keep them at each instant.
        let holds = rule_holds(cat, &def.rule, &FreshEnv(&env));
        let computed: Vec<&CExpr> = def
            .computed
            .iter()
            .filter_map(|&ct| cat.computed.get(ct as usize)?.as_ref())
            .map(|c| &c.expr)
            .collect();
        let horizon = self.now + HORIZON;
        let mut t = self.now;
        let mut next_change = None;
        for _ in 0..MAX_STEPS {
            let env = at(&env, t);
            let Some(n) = def
                .atoms
                .iter()
                .map(|&a| &cat.atoms[a as usize].expr)
                .chain(computed.iter().copied())
                .filter_map(|e| env.next_change(e))
                .min()
            else {
                break;
            };
            if n > horizon {
                break;
            }
            t = n;
            if rule_holds(cat, &def.rule, &FreshEnv(&at(&env, t))) != holds {
                next_change = Some(t);
                break;
            }
        }
        Ok(Explanation {
            audience: audience.to_owned(),
            user_id: self.interner.name(uid).to_owned(),
            rule: def.source.to_string(),
            member: members.is_listed(user, slot),
            entered_at: members.entered(user, slot),
            now: self.now,
            tree,
            next_change,
        })
    }

    /// Evaluates `rule` over every profile against live state, without
    /// saving or emitting anything. With `replacing`, also lists who would
    /// enter and exit that audience. Sample and lists hold at most `limit`
    /// ids each.
    pub fn preview(&self, rule: &str, replacing: Option<&str>, limit: usize) -> Result<Preview> {
        let ast = self.compile_rule(rule)?;
        let mut cat = (*self.catalog).clone();
        let old: Option<AudId> = replacing.map(|k| cat.audience(k)).transpose()?;
        let key = replacing.unwrap_or("\u{0}preview");
        let slot = cat.define(key, rule, ast)?;
        let cat = &cat;
        let g = self.config.granularity;
        let now = self.now;
        // As a backfill does: the rule is false on a profile without states
        // where it is false without events, and on one lacking a state it
        // cannot do without, so neither is evaluated.
        let false_without_events = cat.false_without_events[slot as usize];
        let gate = crate::eval::gate_states(cat, slot);
        let def = cat.audiences[slot as usize].as_ref().expect("just defined");
        let per_shard: Vec<ShardPreview> = self.pool.install(|| {
            self.shards
                .par_iter()
                .map(|shard| {
                    let (mut size, mut profiles) = (0u64, 0u64);
                    let (mut sample, mut entering, mut exiting) =
                        (Vec::new(), Vec::new(), Vec::new());
                    let mut husks = shard.husks.iter().peekable();
                    for (local, user) in shard.users.iter().enumerate() {
                        if husks.next_if_eq(&(local as u32)).is_some() {
                            continue;
                        }
                        let uid = local as u32 * shard.count + shard.index;
                        profiles += 1;
                        let env = UserEnv::new(cat, user, now, g).with_shared(&shard.members);
                        let gated = user.lacks_a_state(&gate);
                        debug_assert!(!gated || !rule_holds(cat, &def.rule, &env));
                        let false_here = gated || false_without_events && user.states.is_empty();
                        let would = !false_here && rule_holds(cat, &def.rule, &env);
                        if would {
                            size += 1;
                            if sample.len() < limit {
                                sample.push(uid);
                            }
                        }
                        if let Some(old) = old {
                            let is = shard.members.is_listed(user, old);
                            if would && !is && entering.len() < limit {
                                entering.push(uid);
                            } else if !would && is && exiting.len() < limit {
                                exiting.push(uid);
                            }
                        }
                    }
                    ShardPreview {
                        size,
                        profiles,
                        sample,
                        entering,
                        exiting,
                    }
                })
                .collect()
        });
        let name = |ids: Vec<u32>| -> Vec<String> {
            let mut ids = ids;
            ids.sort_unstable();
            ids.truncate(limit);
            ids.into_iter()
                .map(|u| self.interner.name(u).to_owned())
                .collect()
        };
        let mut out = Preview {
            size: 0,
            sample: vec![],
            entering: vec![],
            exiting: vec![],
            profiles: 0,
        };
        let (mut sample, mut entering, mut exiting) = (vec![], vec![], vec![]);
        for part in per_shard {
            out.size += part.size;
            out.profiles += part.profiles;
            sample.extend(part.sample);
            entering.extend(part.entering);
            exiting.extend(part.exiting);
        }
        out.sample = name(sample);
        out.entering = name(entering);
        out.exiting = name(exiting);
        Ok(out)
    }

    /// Exact sizes of audiences and of their intersections.
    pub fn overlap(&self, audiences: &[&str]) -> Result<Overlap> {
        if audiences.is_empty() {
            return Err(SegmintError::InvalidArgument {
                message: "overlap needs at least one audience".into(),
            });
        }
        let bitmaps = audiences
            .iter()
            .map(|k| self.bitmap(k))
            .collect::<Result<Vec<_>>>()?;
        let sizes = bitmaps.iter().map(|b| b.len()).collect();
        let pairwise = bitmaps
            .iter()
            .map(|a| bitmaps.iter().map(|b| a.intersection_len(b)).collect())
            .collect();
        let mut all = bitmaps[0].clone();
        for b in &bitmaps[1..] {
            all &= b;
        }
        Ok(Overlap {
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            sizes,
            pairwise,
            all: all.len(),
        })
    }

    /// Traits and audiences (with entry instants) of a user.
    pub fn profile(&self, user_id: &str) -> Result<Profile> {
        let (uid, user) = self.user_data(user_id)?;
        let members = &self.shard_of(uid).members;
        let mut audiences: Vec<(String, Millis)> = user
            .memberships
            .iter()
            .flat_map(|m| members.listed_as(m.id).map(move |a| (a, m.at())))
            .filter_map(|(slot, at)| {
                self.catalog
                    .audiences
                    .get(slot as usize)?
                    .as_ref()
                    .map(|d| (d.key.to_string(), members.entered_from(slot, at)))
            })
            .collect();
        audiences.sort();
        let mut computed: Vec<(String, serde_json::Value)> = user
            .traits
            .computed()
            .iter()
            .filter_map(|(ct, v)| {
                let def = self.catalog.computed.get(*ct as usize)?.as_ref()?;
                Some((def.key.to_string(), v.to_json()))
            })
            .collect();
        computed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Profile {
            user_id: self.interner.name(uid).to_owned(),
            traits: user
                .named_traits(&self.catalog.trait_keys)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_json()))
                .collect(),
            audiences,
            computed,
        })
    }
}
