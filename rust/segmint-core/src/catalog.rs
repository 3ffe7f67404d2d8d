//! The compiled form of every defined audience: shared aggregation states,
//! views over them, compiled expressions and the dependency index that tells
//! an event which rules it can affect.

use std::collections::BTreeSet;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::audience_list::Slots;
use crate::error::{Result, RuleError, SegmintError};
use crate::profile::Interner;
use crate::rules::ast::{self, AggFunc, BinaryOp, ExprKind, Literal, SinceTarget, UnaryOp, Window};
use crate::rules::Type;
use crate::time::Millis;
use crate::value::Value;

/// Index of an aggregation state (one per distinct selector and property).
pub type StateId = u32;
/// Index of a view (an aggregate function over a state and a window).
pub type ViewId = u32;
/// Stable slot of an audience; never reused while the engine lives.
pub type AudId = u32;
/// Stable slot of a computed trait; never reused while the engine lives.
pub type CtId = u32;
/// Dense id of a trait key (see [`Catalog::trait_keys`]).
pub type TraitKey = u32;

/// Comparison operators of compiled expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The operator with its operands swapped (`a < b` ⇔ `b > a`).
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }

    /// Applies the operator to an ordering.
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }

    /// `x op k` on numbers: false when they do not compare (a NaN), as
    /// [`crate::eval::compare`] decides it.
    #[inline]
    pub fn holds_for(self, x: f64, k: f64) -> bool {
        x.partial_cmp(&k).is_some_and(|o| self.holds(o))
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// String operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrOp {
    /// Substring or list element.
    Contains,
    /// Prefix.
    StartsWith,
    /// Suffix.
    EndsWith,
}

/// A compiled expression, evaluated per user by [`crate::eval`].
#[derive(Debug, Clone, PartialEq)]
pub enum CExpr {
    /// A literal.
    Lit(Value),
    /// A trait by dotted key.
    Trait(TraitKey),
    /// An event property (inside selector filters only).
    Property(Arc<str>),
    /// An aggregate value.
    View(ViewId),
    /// Time since the latest visible event of a state.
    SinceEvent(StateId),
    /// Time since a timestamp trait.
    SinceTrait(TraitKey),
    /// Time since the user entered an audience.
    MemberFor(AudId),
    /// Membership of an audience.
    InAudience(AudId),
    /// The current value of a computed trait (kept per user).
    Computed(CtId),
    /// Presence test.
    Exists(Box<CExpr>),
    /// Boolean negation.
    Not(Box<CExpr>),
    /// Conjunction.
    And(Vec<CExpr>),
    /// Disjunction.
    Or(Vec<CExpr>),
    /// Arithmetic negation.
    Neg(Box<CExpr>),
    /// Arithmetic.
    Arith(ArithOp, Box<CExpr>, Box<CExpr>),
    /// Comparison.
    Cmp(CmpOp, Box<CExpr>, Box<CExpr>),
    /// `x in [..]` (`negated`: `not in`).
    In(Box<CExpr>, Vec<Value>, bool),
    /// `x between lo and hi` (`negated`: `not between`).
    Between(Box<CExpr>, Box<CExpr>, Box<CExpr>, bool),
    /// String operators.
    Str(StrOp, Box<CExpr>, Box<CExpr>),
}

impl CExpr {
    /// Whether this is a boolean operator (its value is a condition computed
    /// from its operands, not read from the user's state).
    pub fn is_boolean_operator(&self) -> bool {
        matches!(
            self,
            CExpr::Not(_)
                | CExpr::And(_)
                | CExpr::Or(_)
                | CExpr::Cmp(..)
                | CExpr::In(..)
                | CExpr::Between(..)
                | CExpr::Str(..)
                | CExpr::Exists(_)
        )
    }
}

/// The time range of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowDef {
    /// All visible events.
    All,
    /// Events in `(now - d, now]`.
    Last(Millis),
    /// Events after the latest visible event of another state.
    Since(StateId),
}

/// An aggregate function over a state and a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewDef {
    /// The function (`Did` is compiled to `count >= 1`).
    pub func: AggFunc,
    /// The state it reads.
    pub state: StateId,
    /// The window.
    pub window: WindowDef,
}

/// One aggregation state: the events matching a selector, keeping the value
/// of one property (or none, for counting).
#[derive(Debug, Clone)]
pub struct StateDef {
    /// Event name.
    pub event: Arc<str>,
    /// Compiled `where` filter (shared, as an atom's tree is).
    pub filter: Option<Arc<CExpr>>,
    /// The kept property; events lacking it are not kept.
    pub property: Option<Arc<str>>,
    /// Longest `Last` window over this state (0: none); entries older than
    /// `now - retention` leave the buffer.
    pub retention: Millis,
    /// States `X` with a `since "X"` window over this state: entries after
    /// the latest `X` stay in the buffer.
    pub since_anchors: Vec<StateId>,
    /// Whether evicted entries are summarised (all-time views, `since`).
    pub archive: bool,
    /// Whether the summary keeps a value histogram (all-time distinct,
    /// most_frequent, unique).
    pub archive_freq: bool,
}

/// The rule class of an audience whose result cannot be shared within an
/// evaluation pass (see [`Catalog::rule_class`]).
pub const NO_RULE_CLASS: u32 = u32::MAX;

/// [`Catalog::flip_work`]: the audience has dependents.
pub const FLIP_DEPENDENTS: u8 = 1;
/// [`Catalog::flip_work`]: timed atoms read the audience's membership.
pub const FLIP_TIMED: u8 = 2;
/// [`Catalog::flip_work`]: the audience leads a rule class with followers.
pub const FLIP_FOLLOWERS: u8 = 4;

/// The rule text shown for a static audience.
pub const STATIC_SOURCE: &str = "<static list>";

/// Index of an atom: a deduplicated predicate shared by every rule that
/// contains it (`count("Order Completed", 30d) >= 3`, `trait.plan == "pro"`).
pub type AtomId = u32;

/// A rule as a boolean formula over atoms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleExpr {
    /// A constant.
    Const(bool),
    /// An atom's truth.
    Atom(AtomId),
    /// Negation.
    Not(Box<RuleExpr>),
    /// Conjunction.
    And(Vec<RuleExpr>),
    /// Disjunction.
    Or(Vec<RuleExpr>),
}

impl RuleExpr {
    /// The atom and the truth it must have, when this is an atom or the
    /// negation of one.
    pub fn literal(&self) -> Option<(AtomId, bool)> {
        match self {
            RuleExpr::Atom(a) => Some((*a, true)),
            RuleExpr::Not(x) => match **x {
                RuleExpr::Atom(a) => Some((a, false)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// An audience's rule as an evaluation reads it (see
/// [`Catalog::formulas`]).
#[derive(Debug, Clone, Default)]
pub enum Formula {
    /// Not evaluated: a static audience, or a free slot.
    #[default]
    None,
    /// A conjunction of literals (atoms, or their negations), as most
    /// rules are: each atom with the truth the rule needs of it, cheapest
    /// first (see [`crate::eval::eval_known_first`]).
    Literals(Arc<[(AtomId, bool)]>),
    /// Any other rule.
    Rule(Arc<RuleExpr>),
}

impl Formula {
    /// The formula of an evaluated rule.
    pub fn of_rule(rule: &RuleExpr) -> Formula {
        match conjunction_literals(rule) {
            Some(literals) => Formula::Literals(literals.into()),
            None => Formula::Rule(Arc::new(rule.clone())),
        }
    }
}

/// The lengths of the tables a compile adds to, taken before it: on an
/// error they are cut back to these.
#[derive(Debug, Clone, Copy)]
struct TableMarks {
    states: usize,
    views: usize,
    trait_keys: usize,
}

/// A predicate over one user's state: the unit of incremental evaluation
/// and of timers. What an event asks of each atom it touches is inline,
/// its test included; the rest is shared ([`AtomParts`], read through
/// `Deref`): every definition copies the catalog, atoms of removed rules
/// included, and would otherwise copy each atom's trees and lists.
#[derive(Debug, Clone)]
pub struct AtomDef {
    /// Whether time alone can change it (windows, `since`, `member_for`).
    pub timed: bool,
    /// Set when it is `count(E, W) op k` with a monotone `op`: a +1 flips it
    /// only when it crosses `k`, and never moves its next flip earlier.
    pub threshold: Option<(ViewId, CmpOp, f64)>,
    /// Whether `audiences` is not empty (see [`AtomDef::reads_memberships`]).
    memberships: bool,
    /// Set when it tests one leaf (a trait, a view, a `since`, a
    /// `member_for`, a computed trait) against literals: its truth is then
    /// the test applied to the leaf's value, without walking `expr` (see
    /// [`crate::eval::eval_atom`]). Inline: most atoms an event evaluates
    /// are read through it, and a pointer more cost a load each.
    pub test: Option<(CExpr, LeafTest)>,
    parts: Arc<AtomParts>,
}

/// The shared part of an [`AtomDef`].
#[derive(Debug)]
pub struct AtomParts {
    /// The predicate (a boolean expression without and/or/not at the top).
    pub expr: CExpr,
    /// States it reads (views, `since`, `since "X"` anchors).
    pub states: Vec<StateId>,
    /// Trait keys it reads.
    pub traits: Vec<TraitKey>,
    /// Audiences whose membership it reads.
    pub audiences: Vec<AudId>,
    /// Computed traits whose value it reads.
    pub computed: Vec<CtId>,
}

impl std::ops::Deref for AtomDef {
    type Target = AtomParts;

    fn deref(&self) -> &AtomParts {
        &self.parts
    }
}

/// A leaf whose value grows with time alone, at one millisecond per
/// millisecond: atoms testing the same one against literals change at
/// instants a profile can find from one timer (see
/// [`Catalog::timer_lead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TimeSource {
    Trait(TraitKey),
    Event(StateId),
    Member(AudId),
    /// A view tested against literals by atoms whose next change is the
    /// view's own (its window's next lapse, a future entry becoming
    /// visible), whatever the literal: `sum("Order Completed", revenue,
    /// 365d) > 100`, `> 300`, ... (a count compared with a number flips at
    /// an instant of its own, see [`Catalog::threshold_atom`]).
    View(ViewId),
}

/// A new [`Catalog::generation`], never used before in this process.
fn next_generation() -> u64 {
    static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The values of `items`, ascending, each once.
fn sorted_once<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut all: Vec<T> = items.collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The sizes of the tables (atoms, states, views) that indexes were built
/// over.
#[derive(Debug, Clone, Copy)]
struct IndexedSizes {
    atoms: usize,
    states: usize,
    views: usize,
}

/// The leaf of a [`LeafGroup`], as a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LeafKey {
    View(ViewId),
    Since(StateId),
}

/// The most atoms one timer stands for when they are not all on a
/// [`TimerLadder`]: a firing then tests every atom of its group and finds
/// each one's next change, and the timer fires at each of their instants,
/// so one timer for sixty atoms would do sixty times the work sixty times.
const TIMER_GROUP_MAX: usize = 4;

/// The most atoms one timer stands for when they all test their duration
/// against literal durations: such a group has a [`TimerLadder`], and a
/// firing reads the duration twice and tests only the atoms whose offsets
/// it crosses, and a reschedule searches the ladder, whatever the group's
/// size. (A profile then keeps one timer where it kept fifteen for the
/// sixty `since("Order Completed") between ...` atoms.)
const LADDER_GROUP_MAX: usize = 64;

/// Whether an atom of a time source can be on a [`TimerLadder`]: it
/// tests the duration against literal durations.
fn on_a_ladder(atom: &AtomDef) -> bool {
    let test = atom.test.as_ref().filter(|_| atom.threshold.is_none());
    test.is_some_and(|(_, test)| crate::eval::ladder_offsets(test).is_some())
}

/// The time source an atom tests against literals, if it is that kind of
/// atom (a timed one reading nothing else).
fn time_source(cat: &Catalog, atom: &AtomDef) -> Option<TimeSource> {
    match atom.test.as_ref().filter(|_| atom.timed)?.0 {
        CExpr::SinceTrait(k) => Some(TimeSource::Trait(k)),
        CExpr::SinceEvent(s) => Some(TimeSource::Event(s)),
        CExpr::MemberFor(a) => Some(TimeSource::Member(a)),
        CExpr::View(v) if cat.threshold_atom(&atom.expr).is_none() => Some(TimeSource::View(v)),
        _ => None,
    }
}

/// The instants at which time alone can flip the atoms of a timer's group
/// that all compare one duration (`since(...)`, `member_for(...)`) with
/// literal durations, as offsets from the duration's base: `c` where a
/// test flips as the duration reaches `c` (`< c`, `>= c`, a `between`'s
/// low bound), `c + 1` where it flips once past it (`> c`, `<= c`, a high
/// bound), both for `==` and `!=`. A timer's next instant is then one
/// search of the offsets instead of each atom's own, and a timer that
/// fires tests only the atoms with an offset at its instant.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerLadder {
    /// The duration the group's atoms test.
    pub leaf: CExpr,
    /// Offsets from the duration's base, ascending without repeats.
    pub offsets: Vec<Millis>,
    /// Each atom's offsets, with its index in the group, ascending by
    /// offset: between two offsets, every atom keeps its truth.
    pub edges: Vec<(Millis, u32)>,
}

/// How an atom that compares one leaf with literals decides its truth
/// (the same decisions as [`crate::eval::eval_bool`] on its expression).
#[derive(Debug, Clone, PartialEq)]
pub enum LeafTest {
    /// `leaf op value`, or `value op leaf` when `!leaf_left`.
    Cmp {
        /// The operator as written.
        op: CmpOp,
        /// The literal.
        value: Value,
        /// Whether the leaf is the left operand.
        leaf_left: bool,
    },
    /// `leaf between lo and hi` (`negated`: `not between`).
    Between {
        /// The lower bound.
        lo: Value,
        /// The upper bound.
        hi: Value,
        /// `not between`.
        negated: bool,
    },
    /// `leaf in [...]` (`negated`: `not in`).
    In {
        /// The literals.
        list: Vec<Value>,
        /// `not in`.
        negated: bool,
    },
    /// `exists(leaf)`.
    Exists,
}

impl LeafTest {
    /// The leaf and test of an atom expression, when it has that shape.
    pub fn of(expr: &CExpr) -> Option<(CExpr, LeafTest)> {
        LeafTest::split(expr, |e| {
            matches!(
                e,
                CExpr::Trait(_)
                    | CExpr::View(_)
                    | CExpr::SinceEvent(_)
                    | CExpr::SinceTrait(_)
                    | CExpr::MemberFor(_)
                    | CExpr::Computed(_)
            )
        })
    }

    /// The leaf (an expression `is_leaf` accepts) and test of a comparison
    /// of one leaf with literals.
    pub fn split(expr: &CExpr, is_leaf: impl Fn(&CExpr) -> bool) -> Option<(CExpr, LeafTest)> {
        let leaf = |e: &CExpr| is_leaf(e).then(|| e.clone());
        fn lit(e: &CExpr) -> Option<Value> {
            match e {
                CExpr::Lit(v) => Some(v.clone()),
                _ => None,
            }
        }
        match expr {
            CExpr::Cmp(op, a, b) => {
                let op = *op;
                if let (Some(l), Some(value)) = (leaf(a), lit(b)) {
                    let test = LeafTest::Cmp {
                        op,
                        value,
                        leaf_left: true,
                    };
                    return Some((l, test));
                }
                let (value, l) = (lit(a)?, leaf(b)?);
                Some((
                    l,
                    LeafTest::Cmp {
                        op,
                        value,
                        leaf_left: false,
                    },
                ))
            }
            CExpr::Between(x, lo, hi, negated) => Some((
                leaf(x)?,
                LeafTest::Between {
                    lo: lit(lo)?,
                    hi: lit(hi)?,
                    negated: *negated,
                },
            )),
            CExpr::In(x, list, negated) => Some((
                leaf(x)?,
                LeafTest::In {
                    list: list.clone(),
                    negated: *negated,
                },
            )),
            CExpr::Exists(x) => Some((leaf(x)?, LeafTest::Exists)),
            _ => None,
        }
    }
}

/// The numbers `tests` compare with, sorted, each once (`-0` and `0`
/// are one), without NaN (see [`Catalog::key_number_cuts`]).
fn number_cuts(tests: &[Option<LeafTest>]) -> Box<[f64]> {
    let mut cuts: Vec<f64> = Vec::new();
    for test in tests.iter().flatten() {
        match test {
            LeafTest::Cmp { value, .. } => cuts.extend(value.as_num()),
            LeafTest::Between { lo, hi, .. } => {
                cuts.extend(lo.as_num().into_iter().chain(hi.as_num()))
            }
            LeafTest::In { list, .. } => cuts.extend(list.iter().filter_map(Value::as_num)),
            LeafTest::Exists => {}
        }
    }
    cuts.retain(|n| !n.is_nan());
    cuts.sort_by(f64::total_cmp);
    cuts.dedup_by(|a, b| a == b);
    cuts.into()
}

impl AtomDef {
    /// Whether its truth depends on memberships (`in_audience`,
    /// `member_for`): those change within an evaluation pass, so such an atom
    /// is remembered only from the rules of the pass on (which read it once
    /// its audiences are final), and is not known on an empty profile.
    pub fn reads_memberships(&self) -> bool {
        self.memberships
    }

    /// Whether it reads nothing but aggregation states (no trait, membership
    /// or computed trait): on a profile without states such an atom has its
    /// empty-profile truth and time cannot change it.
    pub fn reads_only_states(&self) -> bool {
        self.traits.is_empty() && self.audiences.is_empty() && self.computed.is_empty()
    }
}

/// A monotone `count(...) op k` atom, indexed so that a +1 finds the atoms
/// it flips without evaluating the others.
#[derive(Debug, Clone)]
pub struct ThresholdAtom {
    /// The constant `k`.
    pub k: f64,
    /// The operator, with the count on the left.
    pub op: CmpOp,
    /// The atom.
    pub atom: AtomId,
}

/// Atoms testing one leaf that reads states (a view, a `since(E)`)
/// against literals: an update of those states changes the truths of all
/// of them or of none, by changing the leaf's value. Twenty
/// `since("Checkout Started") between ...` atoms read one base, and each
/// was evaluated before and after every such event.
#[derive(Debug, Clone)]
pub struct LeafGroup {
    /// The leaf (a `View` or a `SinceEvent`).
    pub leaf: CExpr,
    /// The atoms testing it (each with [`AtomDef::test`] on `leaf`), in id
    /// order.
    pub atoms: Vec<AtomId>,
    /// The timers of its timed atoms ([`Catalog::timer_lead`] of each),
    /// ascending, each once: an update of a state the leaf reads
    /// reschedules those timers, whichever atoms flip, and a timer stands
    /// for up to 64 atoms of one `since`.
    pub timed_leads: Vec<AtomId>,
}

/// Per state: which atoms an update can affect.
#[derive(Debug, Clone, Default)]
pub struct StateIndex {
    /// Atoms evaluated before and after every update of this state.
    pub general: Vec<AtomId>,
    /// The [`Catalog::leaf_groups`] an update of this state can move, by
    /// id, ascending: their leaf is read before and after the update, and
    /// their atoms tested only when its value changed.
    pub leaf_groups: Vec<u32>,
    /// Count views with their threshold atoms sorted by `k`.
    pub thresholds: Vec<(ViewId, Vec<ThresholdAtom>)>,
    /// Every live atom that reads this state (for future-event timers).
    pub all: Vec<AtomId>,
    /// The views an update of this state can move: those over it, and
    /// those whose window starts at its latest event (`since "X"`).
    pub views: Vec<ViewId>,
}

/// The states of one event name and how an event is matched against
/// them: every property their filters and kept values read is looked up
/// once per event, and a filter that is a conjunction of tests of
/// properties against literals (`category == "shoes" and
/// context.device.type == "ios"`) is decided on those values.
#[derive(Debug, Clone, Default)]
pub struct EventStates {
    /// The states, by id.
    pub states: Vec<StateId>,
    /// The property names read, each once.
    pub properties: Vec<Arc<str>>,
    /// Per state: its filter as tests of `properties[i]`, when it has
    /// that shape (`None`: no filter, or evaluate the filter itself).
    pub tests: Vec<Option<Vec<(usize, LeafTest)>>>,
    /// Per state: its kept property, as an index into `properties`.
    pub kept: Vec<Option<usize>>,
}

impl EventStates {
    fn property(&mut self, name: &Arc<str>) -> usize {
        match self.properties.iter().position(|p| p == name) {
            Some(i) => i,
            None => {
                self.properties.push(name.clone());
                self.properties.len() - 1
            }
        }
    }

    fn add(&mut self, id: StateId, def: &StateDef) {
        let tests = def.filter.as_deref().and_then(|filter| {
            let parts = match filter {
                CExpr::And(parts) => &parts[..],
                one => std::slice::from_ref(one),
            };
            parts
                .iter()
                .map(|part| {
                    let (CExpr::Property(name), test) =
                        LeafTest::split(part, |leaf| matches!(leaf, CExpr::Property(_)))?
                    else {
                        return None;
                    };
                    Some((self.property(&name), test))
                })
                .collect()
        });
        let kept = def.property.as_ref().map(|p| self.property(p));
        self.states.push(id);
        self.tests.push(tests);
        self.kept.push(kept);
    }
}

/// A defined audience.
#[derive(Debug, Clone)]
pub struct AudienceDef {
    /// The key.
    pub key: Arc<str>,
    /// The rule text.
    pub source: Arc<str>,
    /// The parsed rule.
    pub ast: ast::Expr,
    /// The compiled rule.
    pub expr: CExpr,
    /// The rule over atoms, each `and`'s and `or`'s cheapest operands first
    /// (see [`Catalog::order_by_cost`]).
    pub rule: RuleExpr,
    /// The atoms it contains.
    pub atoms: Vec<AtomId>,
    /// Audiences it references.
    pub references: Vec<AudId>,
    /// Trait keys it reads.
    pub traits: Vec<TraitKey>,
    /// Computed traits it reads (`computed.KEY`).
    pub computed: Vec<CtId>,
    /// A static audience: members are uploaded, never computed.
    pub is_static: bool,
    /// What the indexes need of `rule`, worked out once.
    pub facts: RuleFacts,
}

/// What the indexes need of a definition's rule, worked out when it is
/// compiled: every definition rebuilds the indexes of the whole catalog,
/// and walking each rule's tree there again (its formula, its atoms'
/// polarities, its hash for the rule classes) was a fifth of a definition
/// at 10,000 audiences.
#[derive(Debug, Clone)]
pub struct RuleFacts {
    /// The rule as an evaluation reads it (see [`Catalog::formulas`]).
    pub formula: Formula,
    /// The polarity of each of the definition's atoms, in their order.
    pub polarities: Box<[Polarity]>,
    /// A hash of the rule: rule classes are found by it.
    pub rule_hash: u64,
    /// [`Catalog::false_without_events`] of a rule reading no computed
    /// trait, once known: its atoms' truths on an empty profile are then
    /// the atoms' own.
    pub false_without_events: std::sync::OnceLock<bool>,
}

impl RuleFacts {
    /// The facts of `rule`, over `atoms`; a static audience's rule is
    /// never evaluated.
    pub fn of(rule: &RuleExpr, atoms: &[AtomId], is_static: bool) -> RuleFacts {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        RuleFacts {
            formula: match is_static {
                true => Formula::None,
                false => Formula::of_rule(rule),
            },
            polarities: atoms.iter().map(|&a| polarity(rule, a)).collect(),
            rule_hash: hasher.hash_one(rule),
            false_without_events: std::sync::OnceLock::new(),
        }
    }
}

/// A rule keyed by its [`RuleFacts::rule_hash`]: hashing it is free, and
/// trees are compared only when the hashes agree.
struct HashedRule<'a> {
    hash: u64,
    rule: &'a RuleExpr,
}

impl std::hash::Hash for HashedRule<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for HashedRule<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.rule == other.rule
    }
}

impl Eq for HashedRule<'_> {}

/// A defined computed trait: a value expression kept per user.
#[derive(Debug, Clone)]
pub struct ComputedDef {
    /// The key (`computed.KEY` in rules).
    pub key: Arc<str>,
    /// The expression text.
    pub source: Arc<str>,
    /// The parsed expression.
    pub ast: ast::Expr,
    /// The value's static type (what `computed.KEY` type-checks as).
    pub ty: Type,
    /// The compiled expression (views over shared states).
    pub expr: CExpr,
    /// States it reads.
    pub states: Vec<StateId>,
    /// Whether time alone can change it (a window lapsing, a future event).
    pub timed: bool,
}

/// What profiles may still hold that a catalog no longer reads: states
/// no live definition reads, atom timers whose group holds no atom of a
/// live rule (firing one would change nothing), and list entries of
/// removed audiences. See [`Catalog::unread_since`].
#[derive(Debug, Clone, Default)]
pub struct Unread {
    /// Per state id.
    pub states: Vec<bool>,
    /// Per atom id (a timer's, computed-trait timers aside).
    pub timers: Vec<bool>,
    /// Per audience slot; empty when none is to drop.
    pub slots: Vec<bool>,
}

impl Unread {
    /// Whether there is nothing to drop.
    pub fn is_empty(&self) -> bool {
        !self.states.contains(&true) && !self.timers.contains(&true) && self.slots.is_empty()
    }

    /// Whether audience slot `aud`'s list entries are unread.
    pub fn slot(&self, aud: AudId) -> bool {
        self.slots.get(aud as usize) == Some(&true)
    }

    /// Whether state `s` is unread.
    pub fn state(&self, s: StateId) -> bool {
        self.states.get(s as usize) == Some(&true)
    }

    /// Whether the timer `id` is unread: an atom's (a computed trait's id,
    /// `COMPUTED_TIMER | ct`, is past every atom id; removing the trait
    /// drops its timers).
    pub fn timer(&self, id: AtomId) -> bool {
        self.timers.get(id as usize) == Some(&true)
    }
}

/// Everything compiled, shared read-only by the shards during a batch.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// States by id.
    pub states: Vec<StateDef>,
    /// States by their selector's text. The texts (and the expressions'
    /// below) are shared: the catalog is copied at every definition.
    state_ids: HashMap<Arc<str>, StateId>,
    /// Views by id.
    pub views: Vec<ViewDef>,
    view_ids: HashMap<ViewDef, ViewId>,
    /// Atoms by id (never removed, so timers stay valid).
    pub atoms: Vec<AtomDef>,
    /// Atoms by their expression's text.
    atom_ids: HashMap<Arc<str>, AtomId>,
    /// Audience slots (`None` once removed). Shared: a definition never
    /// changes once made, and the catalog is copied for every definition
    /// (so that one that fails changes nothing), which cloned every rule's
    /// trees before.
    pub audiences: Vec<Option<Arc<AudienceDef>>>,
    /// Audience slot by key.
    pub by_key: HashMap<Arc<str>, AudId>,
    /// Evaluation order: rank by slot (dependencies first).
    pub rank: Vec<u32>,
    /// Slot by rank (the inverse of `rank`).
    pub by_rank: Vec<AudId>,
    /// States by event name, with what matching an event against them
    /// reads: the live states only.
    pub by_event: HashMap<Arc<str>, EventStates>,
    /// Per state: whether a live rule or computed trait reads it. States
    /// are never removed from the catalog (a rule defined again finds its
    /// ids), but one no live definition reads is neither fed events nor
    /// kept in the profiles (see `Engine::install_catalog`).
    pub live_states: Vec<bool>,
    /// Set while definitions are applied in a row without their indexes
    /// (see [`Catalog::defer_indexes`]).
    indexes_deferred: bool,
    /// Whether the indexes were built over the definitions as they are:
    /// set by every build, cleared by a definition made without one (such
    /// as the items before a failing one of [`Catalog::define_many`]).
    indexes_current: bool,
    /// Per state: affected atoms.
    pub state_index: Vec<StateIndex>,
    /// Per atom: the live rules containing it, with how each rule moves
    /// when the atom becomes true; sorted by slot, like a profile's
    /// memberships (see [`Polarity::movable_rules`]).
    pub atom_rules: Vec<Vec<(AudId, Polarity)>>,
    /// Per atom: the rules of `atom_rules` an atom's flip queues, the
    /// followers of a rule class left out (see `class_followers`).
    pub atom_lead_rules: Vec<Vec<(AudId, Polarity)>>,
    /// Per atom: the rules of `atom_lead_rules` a profile without events
    /// can be in (those not [`Catalog::false_without_events`]): a new
    /// profile's first identify flips trait atoms that are in hundreds of
    /// rules at 10,000 audiences, most of which also need an event.
    pub atom_lead_rules_eventless: Vec<Vec<(AudId, Polarity)>>,
    /// Per audience slot: when it leads its rule class (the class's
    /// lowest rank), the class's other audiences, in rank order; empty
    /// otherwise. The audiences of a class are members of the same users
    /// (one rule over the same states, evaluated whenever any of them is,
    /// and set by a definition's backfill), so an atom's flip queues only
    /// the lead, and the followers are queued when the lead flips: the
    /// standard workload's 1,000 audiences hold 524 distinct rules, and
    /// the copies that do not flip were queued and looked up for nothing.
    pub class_followers: Vec<Vec<AudId>>,
    /// Per audience slot: its rule class's lead, or itself when it leads
    /// one or has no class (the reverse of `class_followers`). A follower
    /// shares its lead's memberships, bitmap and list entries, when it can
    /// (see [`crate::profile::Memberships`]).
    pub class_lead: Vec<AudId>,
    /// Atoms by the trait key they read (indexed by key; keys that no
    /// atom reads may be past the end).
    pub by_trait: Vec<Vec<AtomId>>,
    /// Per atom: when it is a test of one trait against literals
    /// (`trait.country in ["US", "CA"]`), the key and the atom's position
    /// in `by_trait[key]`; its truth is then a function of that trait's
    /// value alone (see [`crate::trait_truths`]).
    pub trait_test: Vec<Option<(TraitKey, u32)>>,
    /// Per trait key, aligned with `by_trait[key]`: each atom's test when
    /// it is one of that key (see `trait_test`), so that the truths of a
    /// value are found without reading the atoms themselves.
    pub key_tests: Vec<Vec<Option<LeafTest>>>,
    /// Per trait key: the numbers its tests compare with (`ltv > 300`,
    /// `ltv between 100 and 1000`, `ltv in [5, 7]`), sorted, each once, no
    /// NaN. Every test of the key reads two numbers alike when they
    /// compare alike with each of these, so a number's truths are those
    /// of its interval between them (see [`crate::trait_truths`]).
    pub key_number_cuts: Vec<Box<[f64]>>,
    /// Every trait key seen, in rules or in events. Users store traits by
    /// these ids: one copy of each key, and integer lookups in rules.
    pub trait_keys: Interner,
    /// Per audience: rules that reference it.
    pub dependents: Vec<Vec<AudId>>,
    /// Per audience: timed atoms that read its membership (`member_for`).
    pub timed_by_audience: Vec<Vec<AtomId>>,
    /// Per audience: which of `dependents`, `timed_by_audience` and
    /// `class_followers` are not empty ([`FLIP_DEPENDENTS`],
    /// [`FLIP_TIMED`], [`FLIP_FOLLOWERS`]), in a byte: a flip reads these
    /// bits, which stay in cache, instead of three lists' headers, which
    /// at ten thousand audiences do not.
    pub flip_work: Vec<u8>,
    /// Each slot's rule as an evaluation reads it, apart from the
    /// definitions: at ten thousand audiences, an evaluation then reads a
    /// short entry of one table instead of a definition's cache lines.
    pub formulas: Vec<Formula>,
    /// Per atom: the atom under whose id a profile keeps the atom's timer.
    /// Timed atoms that test the same `since` or `member_for` against
    /// literals (`since(trait.created_at) < 14d`, `< 30d`, ...) share one
    /// timer, at the earliest of their next changes: a profile then keeps
    /// one timer per time source instead of one per threshold (or one per
    /// [`LADDER_GROUP_MAX`] of them, [`TIMER_GROUP_MAX`] of those no
    /// ladder holds). The lead is the first atom (lowest id)
    /// of its group; groups are formed in id order, and atoms are never
    /// removed, so an atom's lead never changes. Other atoms lead
    /// themselves.
    pub timer_lead: Vec<AtomId>,
    /// Per atom: the atoms of live rules whose timer it leads, in id order
    /// (empty where it leads none). A timer may stand for an atom that is
    /// not timed: a future event's, due when the event becomes visible.
    pub timer_group: Vec<Vec<AtomId>>,
    /// Per atom: the [`TimerLadder`] of the group it leads, when its atoms
    /// all test one duration against literals.
    pub timer_ladder: Vec<Option<TimerLadder>>,
    /// Per atom: the view the atoms of the group it leads all test, when
    /// they change at the view's next change (see `TimeSource::View`): the
    /// group's next change is then found once, not once per atom.
    pub timer_view: Vec<Option<ViewId>>,
    /// The atoms of live rules testing a view or a `since(E)` against
    /// literals, by leaf (see [`StateIndex::leaf_groups`]).
    pub leaf_groups: Vec<LeafGroup>,
    /// Each leaf group's position in `leaf_groups`, by its leaf (a view's
    /// id, or a `since(E)`'s state).
    leaf_group_ids: HashMap<LeafKey, u32>,
    /// The timer groups still taking atoms, per time source and kind, with
    /// how many each has: the atoms after the last are grouped from here
    /// (see [`Catalog::timer_lead`]).
    open_timer_groups: HashMap<(TimeSource, bool), (AtomId, usize)>,
    /// Per audience slot: its rule's class. Audiences with the same rule
    /// over the same atoms share a class (generated and copied audiences
    /// often repeat a rule), so a rule is evaluated once per pass however
    /// many audiences hold it. [`NO_RULE_CLASS`] for a rule that reads
    /// memberships (they move within a pass), a static or a removed slot.
    pub rule_class: Vec<u32>,
    /// Number of rule classes.
    pub rule_classes: usize,
    /// Changes whenever the indexes are rebuilt (a definition was added,
    /// replaced or removed): what was derived from another generation's
    /// rules is not reused (see [`crate::trait_truths::KeyAtoms`]).
    pub generation: u64,
    /// Rules true on an empty profile, in rank order: a new profile starts
    /// as their member.
    pub empty_true: Vec<AudId>,
    /// Per atom: its truth on a new profile (no traits, no events), or
    /// `None` when it reads memberships or no live rule reads it. A new
    /// user's first event needs no "before" evaluation of the others.
    pub empty_atom_truth: Vec<Option<bool>>,
    /// Per audience slot: its rule is false on every profile without events
    /// (see [`crate::eval::rules_false_without_events`]).
    pub false_without_events: Vec<bool>,
    /// Computed trait slots (`None` once removed).
    pub computed: Vec<Option<ComputedDef>>,
    /// Computed trait slot by key.
    pub computed_by_key: HashMap<Arc<str>, CtId>,
    /// Per state: the live computed traits that read it.
    pub computed_by_state: Vec<Vec<CtId>>,
    /// Per computed trait: the live rules that read it.
    pub computed_rules: Vec<Vec<AudId>>,
    /// Values of the computed traits on an empty profile (`count` is 0), by
    /// slot: a new profile starts with them.
    pub empty_computed: Vec<(CtId, Value)>,
}

fn type_error(source: &str, span: ast::Span, message: String) -> SegmintError {
    SegmintError::RuleType(RuleError::at(source, span.start, span.end, message))
}

impl Catalog {
    /// Live audience keys in definition (slot) order.
    pub fn keys(&self) -> impl Iterator<Item = (AudId, &AudienceDef)> {
        self.audiences
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_deref().map(|a| (i as AudId, a)))
    }

    /// Looks an audience up by key.
    pub fn audience(&self, key: &str) -> Result<AudId> {
        self.by_key
            .get(key)
            .copied()
            .ok_or_else(|| SegmintError::UnknownAudience {
                key: key.to_owned(),
            })
    }

    /// Adds or replaces an audience. Returns its slot. On error nothing
    /// changes. A new audience is added to the indexes as they are, when it
    /// can be (see [`Catalog::index_new_audience`]).
    pub fn define(&mut self, key: &str, source: &str, ast: ast::Expr) -> Result<AudId> {
        let sizes = self.indexed_sizes();
        let slot = self.define_unindexed(key, source, ast)?;
        if !self.index_new_audience(slot, sizes) {
            self.rebuild_indexes();
        }
        Ok(slot)
    }

    /// Adds or replaces many audiences with one index rebuild. On an error
    /// (with the index of the failing item) the items before it stay
    /// defined, without indexes: callers define on a copy of the catalog
    /// (`Engine::catalog_after`), which a copy here made twice per
    /// definition. One item alone is [`Catalog::define`]d.
    pub fn define_many(
        &mut self,
        mut items: Vec<(String, String, ast::Expr)>,
    ) -> Result<Vec<AudId>, (usize, SegmintError)> {
        if items.len() == 1 {
            let (key, source, ast) = items.pop().expect("one item");
            return Ok(vec![self.define(&key, &source, ast).map_err(|e| (0, e))?]);
        }
        let mut slots = Vec::with_capacity(items.len());
        for (i, (key, source, ast)) in items.into_iter().enumerate() {
            slots.push(
                self.define_unindexed(&key, &source, ast)
                    .map_err(|e| (i, e))?,
            );
        }
        self.rebuild_indexes();
        Ok(slots)
    }

    fn define_unindexed(&mut self, key: &str, source: &str, ast: ast::Expr) -> Result<AudId> {
        let existing = self.by_key.get(key).copied();
        let mut compiler = Compiler {
            catalog: self,
            source,
            references: BTreeSet::new(),
            traits: BTreeSet::new(),
            computed: BTreeSet::new(),
        };
        // A failure cuts the tables back to these, leaving no orphan
        // state, view or trait key behind.
        let marks = compiler.catalog.table_marks();
        let compiled = compiler.compile(&ast);
        let references: Vec<AudId> = compiler.references.iter().copied().collect();
        let traits: Vec<TraitKey> = compiler.traits.iter().copied().collect();
        let computed: Vec<CtId> = compiler.computed.iter().copied().collect();
        let expr = match compiled {
            Ok(expr) => expr,
            Err(e) => {
                self.truncate_tables(marks);
                return Err(e);
            }
        };
        if let Some(slot) = existing {
            if let Some(path) = self.cycle_through(slot, &references) {
                self.truncate_tables(marks);
                return Err(SegmintError::AudienceCycle { path });
            }
        }
        let mut atoms = Vec::new();
        let mut rule = self.atomize(&expr, &mut atoms);
        self.order_by_cost(&mut rule);
        let facts = RuleFacts::of(&rule, &atoms, false);
        let def = AudienceDef {
            key: Arc::from(key),
            source: Arc::from(source),
            ast,
            expr,
            rule,
            atoms,
            references,
            traits,
            computed,
            is_static: false,
            facts,
        };
        let slot = match existing {
            Some(slot) => {
                self.audiences[slot as usize] = Some(Arc::new(def));
                slot
            }
            None => {
                let slot = self.audiences.len() as AudId;
                self.audiences.push(Some(Arc::new(def)));
                self.by_key.insert(Arc::from(key), slot);
                slot
            }
        };
        self.indexes_current = false;
        Ok(slot)
    }

    /// Adds or replaces a static audience (a manually uploaded list): its
    /// membership is set by [`crate::Engine::define_static_audience`] and
    /// never evaluated. Rules may reference it.
    pub fn define_static(&mut self, key: &str) -> AudId {
        let literal = ast::Expr {
            kind: ast::ExprKind::Literal(ast::Literal::Bool(false)),
            span: ast::Span::default(),
        };
        let def = AudienceDef {
            key: Arc::from(key),
            source: Arc::from(STATIC_SOURCE),
            ast: literal,
            expr: CExpr::Lit(Value::Bool(false)),
            rule: RuleExpr::Const(false),
            atoms: Vec::new(),
            references: Vec::new(),
            traits: Vec::new(),
            computed: Vec::new(),
            is_static: true,
            facts: RuleFacts::of(&RuleExpr::Const(false), &[], true),
        };
        let slot = match self.by_key.get(key) {
            Some(&slot) => slot,
            None => {
                let slot = self.audiences.len() as AudId;
                self.audiences.push(None);
                self.by_key.insert(Arc::from(key), slot);
                slot
            }
        };
        self.audiences[slot as usize] = Some(Arc::new(def));
        self.rebuild_indexes();
        slot
    }

    /// What this catalog no longer reads that `old` did (with `old`
    /// `None`: all it does not read, removed audiences' list entries
    /// included, for a snapshot written before profiles dropped it; a
    /// removal drops its own entries, member by member, in
    /// `Shard::remove_audience`). Timer groups are kept by lead, and an
    /// atom's lead never changes, so a timer is unread when its lead's
    /// group is empty here.
    pub fn unread_since(&self, old: Option<&Catalog>) -> Unread {
        let states = (self.live_states.iter().enumerate())
            .map(|(s, &live)| !live && old.is_none_or(|o| o.live_states.get(s) == Some(&true)))
            .collect();
        let lead = |a: usize| self.timer_lead.get(a).map_or(a, |&l| l as usize);
        // Only a timed atom or one reading states (a future event's timer)
        // sets a timer, under its lead's id: a group of trait tests never
        // has one to drop (atoms never change, so this catalog tells).
        let mut sets_timers = vec![false; self.atoms.len()];
        for (a, atom) in self.atoms.iter().enumerate() {
            if atom.timed || !atom.states.is_empty() {
                sets_timers[lead(a)] = true;
            }
        }
        let group_empty =
            |cat: &Catalog, a: usize| cat.timer_group.get(lead(a)).is_none_or(Vec::is_empty);
        let timers = (0..self.atoms.len())
            .map(|a| {
                sets_timers[lead(a)]
                    && group_empty(self, a)
                    && old.is_none_or(|o| !group_empty(o, a))
            })
            .collect();
        let removed = |slots: &[Option<Arc<AudienceDef>>]| slots.iter().any(Option::is_none);
        let slots = match old {
            None if removed(&self.audiences) => {
                self.audiences.iter().map(Option::is_none).collect()
            }
            _ => Vec::new(),
        };
        Unread {
            states,
            timers,
            slots,
        }
    }

    /// Removes an audience; an error if another rule references it.
    pub fn remove(&mut self, key: &str) -> Result<AudId> {
        let slot = self.audience(key)?;
        let used_by: Vec<String> = self
            .keys()
            .filter(|(_, a)| a.references.contains(&slot))
            .map(|(_, a)| a.key.to_string())
            .collect();
        if !used_by.is_empty() {
            return Err(SegmintError::InUse {
                key: key.to_owned(),
                used_by,
            });
        }
        self.audiences[slot as usize] = None;
        self.by_key.remove(key);
        self.rebuild_indexes();
        Ok(slot)
    }

    /// Live computed traits in definition (slot) order.
    pub fn computed_traits(&self) -> impl Iterator<Item = (CtId, &ComputedDef)> {
        self.computed
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as CtId, c)))
    }

    /// Looks a computed trait up by key.
    pub fn computed_trait(&self, key: &str) -> Result<CtId> {
        self.computed_by_key
            .get(key)
            .copied()
            .ok_or_else(|| SegmintError::UnknownComputedTrait {
                key: key.to_owned(),
            })
    }

    /// The key of a computed trait slot (also of a removed one).
    pub fn computed_key_of(&self, ct: CtId) -> &str {
        self.computed
            .get(ct as usize)
            .and_then(|c| c.as_ref())
            .map_or("?", |c| &c.key)
    }

    /// What `computed.KEY` type-checks as in a rule, or why it cannot be used:
    /// the resolver given to [`crate::rules::check_rule_in`].
    pub fn computed_type(&self, key: &str) -> std::result::Result<Type, String> {
        match self.computed_by_key.get(key) {
            Some(&ct) => Ok(self.computed[ct as usize]
                .as_ref()
                .map_or(Type::Any, |c| c.ty)),
            None => {
                let mut known: Vec<&str> = self.computed_traits().map(|(_, c)| &*c.key).collect();
                known.sort_unstable();
                Err(if known.is_empty() {
                    format!(
                        "unknown computed trait '{key}': no computed trait is defined; define it first with define_computed_trait"
                    )
                } else {
                    format!(
                        "unknown computed trait '{key}'; expected one of: {}",
                        known.join(", ")
                    )
                })
            }
        }
    }

    /// Adds or replaces a computed trait from a checked value expression (see
    /// [`crate::rules::compile_value`]). Returns its slot and whether it
    /// replaced an existing one. On error nothing changes.
    ///
    /// Replacing re-checks every rule that reads `computed.KEY` against the
    /// new type; a rule that no longer type-checks is an error naming it.
    pub fn define_computed(
        &mut self,
        key: &str,
        source: &str,
        ast: ast::Expr,
        ty: Type,
    ) -> Result<(CtId, bool)> {
        let existing = self.computed_by_key.get(key).copied();
        let marks = self.table_marks();
        let mut compiler = Compiler {
            catalog: self,
            source,
            references: BTreeSet::new(),
            traits: BTreeSet::new(),
            computed: BTreeSet::new(),
        };
        let expr = match compiler.compile(&ast) {
            Ok(expr) => expr,
            Err(e) => {
                self.truncate_tables(marks);
                return Err(e);
            }
        };
        if let Some(e) = existing.and_then(|ct| self.recheck_readers(ct, key, source, ty)) {
            self.truncate_tables(marks);
            return Err(e);
        }
        let mut reads = Reads::default();
        reads.collect(self, &expr);
        let def = ComputedDef {
            key: Arc::from(key),
            source: Arc::from(source),
            ast,
            ty,
            expr,
            states: reads.states,
            timed: reads.timed,
        };
        let ct = match existing {
            Some(ct) => {
                self.computed[ct as usize] = Some(def);
                ct
            }
            None => {
                let ct = self.computed.len() as CtId;
                self.computed.push(Some(def));
                self.computed_by_key.insert(Arc::from(key), ct);
                ct
            }
        };
        self.rebuild_indexes();
        Ok((ct, existing.is_some()))
    }

    /// The first rule reading computed trait `ct` that no longer type-checks
    /// once `computed.KEY` has type `ty`, as an error naming the audience.
    fn recheck_readers(&self, ct: CtId, key: &str, source: &str, ty: Type) -> Option<SegmintError> {
        if self.computed[ct as usize].as_ref().map(|c| c.ty) == Some(ty) {
            return None;
        }
        let resolve = |k: &str| {
            if k == key {
                Ok(ty)
            } else {
                self.computed_type(k)
            }
        };
        self.keys()
            .filter(|(_, aud)| aud.computed.contains(&ct))
            .find_map(|(_, aud)| {
                let err = crate::rules::check_rule_in(&aud.source, &aud.ast, &resolve).err()?;
                Some(match err {
                    SegmintError::RuleType(mut r) | SegmintError::RuleSyntax(mut r) => {
                        r.message = format!(
                            "audience '{}' uses computed.{key}, which would become {} ({source}): {}",
                            aud.key,
                            type_article(ty),
                            r.message
                        );
                        SegmintError::RuleType(r)
                    }
                    other => other,
                })
            })
    }

    /// Removes a computed trait; an error naming the rules that read it.
    pub fn remove_computed(&mut self, key: &str) -> Result<CtId> {
        let ct = self.computed_trait(key)?;
        let used_by: Vec<String> = self
            .keys()
            .filter(|(_, a)| a.computed.contains(&ct))
            .map(|(_, a)| a.key.to_string())
            .collect();
        if !used_by.is_empty() {
            return Err(SegmintError::InUse {
                key: format!("computed.{key}"),
                used_by,
            });
        }
        self.computed[ct as usize] = None;
        self.computed_by_key.remove(key);
        self.rebuild_indexes();
        Ok(ct)
    }

    /// Where the tables a compile adds to end now (see
    /// [`Catalog::truncate_tables`]).
    fn table_marks(&self) -> TableMarks {
        TableMarks {
            states: self.states.len(),
            views: self.views.len(),
            trait_keys: self.trait_keys.len(),
        }
    }

    /// Drops what a failed compile added since `marks`: its states, views
    /// and trait keys (none of which anything else refers to yet).
    fn truncate_tables(&mut self, marks: TableMarks) {
        let TableMarks {
            states,
            views,
            trait_keys,
        } = marks;
        self.states.truncate(states);
        self.state_ids.retain(|_, id| (*id as usize) < states);
        self.views.truncate(views);
        self.view_ids.retain(|_, id| (*id as usize) < views);
        self.trait_keys.truncate(trait_keys);
    }

    /// If `slot` referencing `references` closes a cycle, the cycle's keys.
    fn cycle_through(&self, slot: AudId, references: &[AudId]) -> Option<Vec<String>> {
        fn walk(cat: &Catalog, target: AudId, at: AudId, path: &mut Vec<AudId>) -> bool {
            path.push(at);
            if at == target {
                return true;
            }
            if let Some(Some(def)) = cat.audiences.get(at as usize) {
                for &next in &def.references {
                    if walk(cat, target, next, path) {
                        return true;
                    }
                }
            }
            path.pop();
            false
        }
        for &r in references {
            let mut path = vec![slot];
            if walk(self, slot, r, &mut path) {
                return Some(path.iter().map(|&a| self.key_of(a).to_string()).collect());
            }
        }
        None
    }

    /// The key of a slot (also of a removed one, for old changes).
    pub fn key_of(&self, slot: AudId) -> &str {
        self.audiences
            .get(slot as usize)
            .and_then(|a| a.as_ref())
            .map_or("?", |a| &a.key)
    }

    /// Leaves the indexes as they are until
    /// [`Catalog::build_deferred_indexes`]: definitions compile against the
    /// tables they add to (states, views, atoms, keys), never the indexes,
    /// so many in a row need them built once.
    pub(crate) fn defer_indexes(&mut self) {
        self.indexes_deferred = true;
    }

    /// Builds the indexes [`Catalog::defer_indexes`] left.
    pub(crate) fn build_deferred_indexes(&mut self) {
        self.indexes_deferred = false;
        self.rebuild_indexes();
    }

    /// The sizes of the tables the indexes were last built over, when they
    /// are current.
    fn indexed_sizes(&self) -> Option<IndexedSizes> {
        (self.indexes_current && !self.indexes_deferred).then_some(IndexedSizes {
            atoms: self.atoms.len(),
            states: self.states.len(),
            views: self.views.len(),
        })
    }

    /// Adds audience `slot`, just defined, to indexes built over the
    /// tables of `sizes` (`None`: they were not current before it),
    /// instead of rebuilding every index: a definition at 10,000 audiences
    /// took over 10 ms that way, most of it rebuilding what it did not
    /// change. Applies to a new slot after every other (not a replacement)
    /// when each index only grows at its end, as a rebuild would grow it:
    /// every atom of the rule is new or already read by a live rule, and
    /// every state its new atoms read is new or already live. Returns
    /// false otherwise, having changed nothing (a rule reading an atom or
    /// a state left by a removed one gets a rebuild). Debug builds check
    /// the result against a rebuild.
    fn index_new_audience(&mut self, slot: AudId, sizes: Option<IndexedSizes>) -> bool {
        let n = slot as usize;
        let Some(sizes) = sizes.filter(|_| self.rank.len() == n && self.audiences.len() == n + 1)
        else {
            return false;
        };
        let Some(def) = self.audiences[n].clone() else {
            return false;
        };
        let old_atom = |a: AtomId| (a as usize) < sizes.atoms;
        let revives_atom =
            (def.atoms.iter()).any(|&a| old_atom(a) && self.atom_rules[a as usize].is_empty());
        let new_atoms = sizes.atoms..self.atoms.len();
        let revives_state = (self.atoms[new_atoms.clone()].iter())
            .flat_map(|atom| &atom.states)
            .any(|&s| (s as usize) < sizes.states && !self.live_states[s as usize]);
        if revives_atom || revives_state {
            return false;
        }
        // New slot, atoms, states and views: the tables' new rows.
        self.rank.push(n as u32);
        self.by_rank.push(slot);
        self.dependents.push(Vec::new());
        self.timed_by_audience.push(Vec::new());
        for &r in &def.references {
            self.dependents[r as usize].push(slot);
        }
        for &c in &def.computed {
            self.computed_rules[c as usize].push(slot);
        }
        let atom_count = self.atoms.len();
        self.atom_rules.resize_with(atom_count, Vec::new);
        self.atom_lead_rules.resize_with(atom_count, Vec::new);
        self.atom_lead_rules_eventless
            .resize_with(atom_count, Vec::new);
        self.trait_test.resize(atom_count, None);
        self.timer_group.resize_with(atom_count, Vec::new);
        self.timer_ladder.resize(atom_count, None);
        self.lead_timers_from(sizes.atoms);
        for (&a, &p) in def.atoms.iter().zip(&def.facts.polarities) {
            self.atom_rules[a as usize].push((slot, p));
        }
        let state_count = self.states.len();
        self.state_index
            .resize_with(state_count, StateIndex::default);
        self.computed_by_state.resize_with(state_count, Vec::new);
        self.live_states.resize(state_count, false);
        for id in sizes.views..self.views.len() {
            self.index_view(id as ViewId);
        }
        let new_atom_states = sorted_once(
            (self.atoms[new_atoms.clone()].iter()).flat_map(|atom| atom.states.iter().copied()),
        );
        let newly_live: Vec<StateId> = (new_atom_states.iter().copied())
            .filter(|&s| !self.live_states[s as usize])
            .collect();
        for &s in &newly_live {
            self.live_states[s as usize] = true;
            let def = &self.states[s as usize];
            self.by_event
                .entry(def.event.clone())
                .or_default()
                .add(s, def);
        }
        let lead = self.join_rule_class(slot, &def);
        // The new atoms' indexes, in id order (after every atom before).
        let atoms = std::mem::take(&mut self.atoms);
        for a in new_atoms.clone() {
            self.index_live_atom(a as AtomId, &atoms[a]);
        }
        self.atoms = atoms;
        let keys = sorted_once(
            (self.atoms[new_atoms.clone()].iter()).flat_map(|atom| atom.traits.iter().copied()),
        );
        self.key_number_cuts
            .resize_with(self.key_tests.len(), Default::default);
        for t in keys {
            self.key_number_cuts[t as usize] = number_cuts(&self.key_tests[t as usize]);
        }
        for &s in &new_atom_states {
            self.settle_state_index(s);
        }
        let groups = new_atom_states
            .iter()
            .flat_map(|&s| &self.state_index[s as usize].leaf_groups);
        for g in sorted_once(groups.copied()) {
            self.settle_leaf_group(g as usize);
        }
        for lead in sorted_once(new_atoms.clone().map(|a| self.timer_lead[a])) {
            self.timer_ladder[lead as usize] =
                crate::eval::timer_ladder(self, &self.timer_group[lead as usize]);
        }
        self.generation = next_generation();
        // What an empty profile makes of the new atoms and rule.
        let truths = crate::eval::atoms_on_empty_profile_among(self, new_atoms.clone());
        self.empty_atom_truth.extend(truths);
        if crate::eval::rule_true_on_empty_profile(self, slot) {
            self.empty_true.push(slot);
        }
        let never = crate::eval::rule_false_without_events(self, &def);
        self.false_without_events.push(never);
        if lead == slot {
            for (&a, &p) in def.atoms.iter().zip(&def.facts.polarities) {
                self.atom_lead_rules[a as usize].push((slot, p));
                if !never {
                    self.atom_lead_rules_eventless[a as usize].push((slot, p));
                }
            }
        }
        self.formulas.push(def.facts.formula.clone());
        self.flip_work.push(0);
        let mut moved: Vec<AudId> = def.references.clone();
        moved.extend([slot, lead]);
        for a in new_atoms {
            if self.atoms[a].timed {
                moved.extend_from_slice(&self.atoms[a].audiences);
            }
        }
        for a in moved {
            self.flip_work[a as usize] = self.flip_work_from_lists(a as usize);
        }
        self.indexes_current = true;
        #[cfg(debug_assertions)]
        self.assert_indexes_as_rebuilt();
        true
    }

    /// Checks (in debug builds) that the indexes are those a rebuild makes.
    #[cfg(any(test, debug_assertions))]
    fn assert_indexes_as_rebuilt(&self) {
        let mut rebuilt = self.clone();
        rebuilt.rebuild_indexes();
        assert_eq!(
            self.index_digest(),
            rebuilt.index_digest(),
            "incremental indexes"
        );
    }

    /// Every derived index, printed (hash maps in key order), the
    /// generation left out.
    #[cfg(any(test, debug_assertions))]
    fn index_digest(&self) -> Vec<String> {
        fn sorted<K: std::fmt::Debug, V: std::fmt::Debug>(map: &HashMap<K, V>) -> String {
            let mut entries: Vec<String> = map.iter().map(|e| format!("{e:?}")).collect();
            entries.sort();
            entries.join(";")
        }
        vec![
            format!("{:?}", self.states),
            format!("{:?} {:?}", self.rank, self.by_rank),
            sorted(&self.by_event),
            format!("{:?}", self.live_states),
            format!("{:?}", self.state_index),
            format!("{:?}", self.atom_rules),
            format!("{:?}", self.atom_lead_rules),
            format!("{:?}", self.atom_lead_rules_eventless),
            format!("{:?} {:?}", self.class_followers, self.class_lead),
            format!("{:?} {:?}", self.by_trait, self.trait_test),
            format!("{:?} {:?}", self.key_tests, self.key_number_cuts),
            format!("{:?} {:?}", self.dependents, self.timed_by_audience),
            format!("{:?} {:?}", self.flip_work, self.formulas),
            format!("{:?} {:?}", self.timer_lead, self.timer_group),
            format!("{:?} {:?}", self.timer_ladder, self.timer_view),
            format!("{:?}", self.leaf_groups),
            sorted(&self.leaf_group_ids),
            sorted(&self.open_timer_groups),
            format!("{:?} {:?}", self.rule_class, self.rule_classes),
            format!("{:?} {:?}", self.empty_true, self.empty_atom_truth),
            format!("{:?}", self.false_without_events),
            format!("{:?} {:?}", self.computed_by_state, self.computed_rules),
            format!("{:?}", self.empty_computed),
        ]
    }

    /// Recomputes every derived index from the audience list (unless
    /// deferred, see [`Catalog::defer_indexes`]).
    fn rebuild_indexes(&mut self) {
        if self.indexes_deferred {
            return;
        }
        self.indexes_current = true;
        let n = self.audiences.len();
        // Topological ranks: dependencies first, ties by slot.
        let mut rank = vec![u32::MAX; n];
        let mut next = 0u32;
        fn visit(cat: &Catalog, a: usize, rank: &mut [u32], next: &mut u32) {
            if rank[a] != u32::MAX {
                return;
            }
            if let Some(def) = &cat.audiences[a] {
                for &r in &def.references {
                    visit(cat, r as usize, rank, next);
                }
            }
            rank[a] = *next;
            *next += 1;
        }
        for a in 0..n {
            visit(self, a, &mut rank, &mut next);
        }
        self.by_rank = vec![0; n];
        for (slot, &r) in rank.iter().enumerate() {
            self.by_rank[r as usize] = slot as AudId;
        }
        self.rank = rank;
        self.dependents = vec![Vec::new(); n];
        self.timed_by_audience = vec![Vec::new(); n];
        self.by_trait.clear();
        self.key_tests.clear();
        self.key_number_cuts.clear();
        self.trait_test = vec![None; self.atoms.len()];
        self.by_event.clear();
        self.state_index = vec![StateIndex::default(); self.states.len()];
        self.leaf_groups.clear();
        self.leaf_group_ids.clear();
        for id in 0..self.views.len() {
            self.index_view(id as ViewId);
        }
        self.atom_rules = vec![Vec::new(); self.atoms.len()];
        self.timer_lead.clear();
        self.timer_view.clear();
        self.open_timer_groups.clear();
        self.lead_timers_from(0);
        self.timer_group = vec![Vec::new(); self.atoms.len()];
        for s in &mut self.states {
            s.retention = 0;
            s.since_anchors.clear();
            s.archive = false;
            s.archive_freq = false;
        }
        self.computed_by_state = vec![Vec::new(); self.states.len()];
        self.computed_rules = vec![Vec::new(); self.computed.len()];
        (self.rule_class, self.rule_classes) = self.classify_rules();
        self.generation = next_generation();
        for (slot, def) in self.audiences.iter().enumerate() {
            let Some(def) = def else { continue };
            let slot = slot as AudId;
            for &r in &def.references {
                self.dependents[r as usize].push(slot);
            }
            for &c in &def.computed {
                self.computed_rules[c as usize].push(slot);
            }
            for (&a, &p) in def.atoms.iter().zip(&def.facts.polarities) {
                self.atom_rules[a as usize].push((slot, p));
            }
        }
        // The states live atoms and computed traits read.
        self.live_states = vec![false; self.states.len()];
        let live_atoms = self.atom_rules.iter().zip(&self.atoms);
        let atom_states = live_atoms.filter(|(rules, _)| !rules.is_empty());
        let computed_states = self.computed.iter().flatten().map(|c| &c.states);
        for &s in atom_states
            .flat_map(|(_, a)| &a.states)
            .chain(computed_states.flatten())
        {
            self.live_states[s as usize] = true;
        }
        for (id, s) in self.states.iter().enumerate() {
            if self.live_states[id] {
                self.by_event
                    .entry(s.event.clone())
                    .or_default()
                    .add(id as StateId, s);
            }
        }
        self.set_class_leads();
        // Only atoms of live rules shape the states and the indexes.
        // Lent out while the indexes are written (cloning each atom's
        // tree was a tenth of a definition at 1,000 audiences).
        let atoms = std::mem::take(&mut self.atoms);
        for (a, atom) in atoms.iter().enumerate() {
            if !self.atom_rules[a].is_empty() {
                self.index_live_atom(a as AtomId, atom);
            }
        }
        self.atoms = atoms;
        self.key_number_cuts = self
            .key_tests
            .iter()
            .map(|tests| number_cuts(tests))
            .collect();
        let computed = std::mem::take(&mut self.computed);
        for (ct, def) in computed.iter().enumerate() {
            let Some(def) = def else {
                continue;
            };
            self.mark_states(&def.expr);
            for &s in &def.states {
                self.computed_by_state[s as usize].push(ct as CtId);
            }
        }
        self.computed = computed;
        for s in 0..self.state_index.len() {
            self.settle_state_index(s as StateId);
        }
        for g in 0..self.leaf_groups.len() {
            self.settle_leaf_group(g);
        }
        self.timer_ladder = (0..self.atoms.len())
            .map(|lead| crate::eval::timer_ladder(self, &self.timer_group[lead]))
            .collect();
        self.empty_computed = crate::eval::computed_on_empty_profile(self);
        // The atoms' first: the rules' read them.
        self.empty_atom_truth = crate::eval::atoms_on_empty_profile(self);
        self.empty_true = crate::eval::rules_true_on_empty_profile(self);
        self.false_without_events = crate::eval::rules_false_without_events(self);
        let false_without_events = &self.false_without_events;
        self.atom_lead_rules_eventless = self
            .atom_lead_rules
            .iter()
            .map(|rules| {
                let can_hold =
                    |&&(aud, _): &&(AudId, Polarity)| !false_without_events[aud as usize];
                rules.iter().filter(can_hold).copied().collect()
            })
            .collect();
        self.formulas = self
            .audiences
            .iter()
            .map(|def| {
                def.as_ref()
                    .map_or(Formula::None, |d| d.facts.formula.clone())
            })
            .collect();
        self.flip_work = (0..self.audiences.len())
            .map(|a| self.flip_work_from_lists(a))
            .collect();
    }

    /// Extends [`Catalog::timer_lead`] and [`Catalog::timer_view`] to the
    /// atoms from `first` on: atoms testing the same time source against
    /// literals are led by the first of them, in id order, until its group
    /// is full.
    fn lead_timers_from(&mut self, first: usize) {
        for id in first as AtomId..self.atoms.len() as AtomId {
            let atom = &self.atoms[id as usize];
            let (lead, view) = match time_source(self, atom) {
                Some(source) => {
                    let ladder = on_a_ladder(atom);
                    // A view's atoms all change at the view's next change:
                    // a firing is due for each of them, as for a ladder.
                    let max = if ladder || matches!(source, TimeSource::View(_)) {
                        LADDER_GROUP_MAX
                    } else {
                        TIMER_GROUP_MAX
                    };
                    let open = &mut self.open_timer_groups;
                    let (lead, led) = open.entry((source, ladder)).or_insert((id, 0));
                    if *led == max {
                        (*lead, *led) = (id, 0);
                    }
                    *led += 1;
                    match (source, *lead == id) {
                        (TimeSource::View(view), true) => (*lead, Some(view)),
                        _ => (*lead, None),
                    }
                }
                None => (id, None),
            };
            self.timer_lead.push(lead);
            self.timer_view.push(view);
        }
    }

    /// Lists view `id` in the [`StateIndex::views`] of the states whose
    /// updates move it.
    fn index_view(&mut self, id: ViewId) {
        let view = self.views[id as usize];
        self.state_index[view.state as usize].views.push(id);
        if let WindowDef::Since(anchor) = view.window {
            if anchor != view.state {
                self.state_index[anchor as usize].views.push(id);
            }
        }
    }

    /// Adds `atom`, one of a live rule, to the indexes of the states and
    /// trait keys it reads, to the audiences its timer reads and to its
    /// timer's group (after every atom of a lower id). Leaves the lists it
    /// extends unsorted: [`Catalog::settle_state_index`] and
    /// [`Catalog::settle_leaf_group`] then put them in order.
    fn index_live_atom(&mut self, id: AtomId, atom: &AtomDef) {
        self.mark_states(&atom.expr);
        for &s in &atom.states {
            let idx = &mut self.state_index[s as usize];
            idx.all.push(id);
            match atom.threshold {
                Some((view, op, k)) if self.views[view as usize].state == s => {
                    let entry = ThresholdAtom { k, op, atom: id };
                    match idx.thresholds.iter_mut().find(|(v, _)| *v == view) {
                        Some((_, atoms)) => atoms.push(entry),
                        None => idx.thresholds.push((view, vec![entry])),
                    }
                }
                _ => match &atom.test {
                    Some((leaf @ (CExpr::View(_) | CExpr::SinceEvent(_)), _)) => {
                        let key = match *leaf {
                            CExpr::View(v) => LeafKey::View(v),
                            CExpr::SinceEvent(s) => LeafKey::Since(s),
                            _ => unreachable!("matched above"),
                        };
                        let groups = &mut self.leaf_groups;
                        let group = *self.leaf_group_ids.entry(key).or_insert_with(|| {
                            groups.push(LeafGroup {
                                leaf: leaf.clone(),
                                atoms: Vec::new(),
                                timed_leads: Vec::new(),
                            });
                            groups.len() as u32 - 1
                        });
                        groups[group as usize].atoms.push(id);
                        idx.leaf_groups.push(group);
                    }
                    _ => idx.general.push(id),
                },
            }
        }
        for &t in &atom.traits {
            if self.by_trait.len() <= t as usize {
                self.by_trait.resize_with(t as usize + 1, Vec::new);
                self.key_tests.resize_with(t as usize + 1, Vec::new);
            }
            self.by_trait[t as usize].push(id);
            let test = match &atom.test {
                Some((CExpr::Trait(k), test)) if *k == t => Some(test.clone()),
                _ => None,
            };
            if test.is_some() {
                let position = self.by_trait[t as usize].len() - 1;
                self.trait_test[id as usize] = Some((t, position as u32));
            }
            self.key_tests[t as usize].push(test);
        }
        if atom.timed {
            for &aud in &atom.audiences {
                self.timed_by_audience[aud as usize].push(id);
            }
        }
        self.timer_group[self.timer_lead[id as usize] as usize].push(id);
    }

    /// Sorts the lists of state `s`'s index that [`Catalog::index_live_atom`]
    /// extended.
    fn settle_state_index(&mut self, s: StateId) {
        let idx = &mut self.state_index[s as usize];
        for (_, atoms) in &mut idx.thresholds {
            atoms.sort_by(|a, b| a.k.total_cmp(&b.k));
        }
        for list in [&mut idx.general, &mut idx.all, &mut idx.leaf_groups] {
            list.sort_unstable();
            list.dedup();
        }
    }

    /// Sorts leaf group `g`'s atoms and lists their timers.
    fn settle_leaf_group(&mut self, g: usize) {
        let group = &mut self.leaf_groups[g];
        // An atom reading two states (`count("A", since "B")`) was
        // listed once per state.
        group.atoms.sort_unstable();
        group.atoms.dedup();
        let (atoms, leads) = (&self.atoms, &self.timer_lead);
        group.timed_leads = group
            .atoms
            .iter()
            .filter(|&&a| atoms[a as usize].timed)
            .map(|&a| leads[a as usize])
            .collect();
        group.timed_leads.sort_unstable();
        group.timed_leads.dedup();
    }

    /// Puts `slot`, a new audience ranking after every other, in the rule
    /// class of the earlier audiences with the same rule (whose lead leads
    /// it too), or in a new class, or in none when its rule reads
    /// memberships (see [`Catalog::rule_class`]). Returns its lead.
    fn join_rule_class(&mut self, slot: AudId, def: &AudienceDef) -> AudId {
        let n = slot as usize;
        let reads_memberships =
            (def.atoms.iter()).any(|&a| self.atoms[a as usize].reads_memberships());
        let same_rule = |other: &usize| {
            self.rule_class[*other] != NO_RULE_CLASS
                && self.audiences[*other]
                    .as_ref()
                    .is_some_and(|o| o.facts.rule_hash == def.facts.rule_hash && o.rule == def.rule)
        };
        let (class, lead) = match (0..n).find(same_rule) {
            _ if reads_memberships => (NO_RULE_CLASS, slot),
            Some(other) => (self.rule_class[other], self.class_lead[other]),
            None => {
                self.rule_classes += 1;
                (self.rule_classes as u32 - 1, slot)
            }
        };
        self.rule_class.push(class);
        self.class_lead.push(lead);
        self.class_followers.push(Vec::new());
        if lead != slot {
            self.class_followers[lead as usize].push(slot);
        }
        lead
    }

    /// The [`Catalog::flip_work`] bits of slot `a` from its lists.
    fn flip_work_from_lists(&self, a: usize) -> u8 {
        let bit = |nonempty: bool, flag: u8| if nonempty { flag } else { 0 };
        bit(!self.dependents[a].is_empty(), FLIP_DEPENDENTS)
            | bit(!self.timed_by_audience[a].is_empty(), FLIP_TIMED)
            | bit(!self.class_followers[a].is_empty(), FLIP_FOLLOWERS)
    }

    /// The [`Catalog::flip_work`] bits of `aud` (all of them for a slot
    /// the indexes were not rebuilt for: its lists are then looked at).
    #[inline]
    pub fn flip_work_of(&self, aud: AudId) -> u8 {
        self.flip_work.get(aud as usize).copied().unwrap_or(u8::MAX)
    }

    /// Each audience slot's rule class (see [`Catalog::rule_class`]) and
    /// the number of classes.
    fn classify_rules(&self) -> (Vec<u32>, usize) {
        let mut classes: HashMap<HashedRule<'_>, u32> = HashMap::new();
        let mut class_of = vec![NO_RULE_CLASS; self.audiences.len()];
        for (slot, def) in self.audiences.iter().enumerate() {
            let Some(def) = def else { continue };
            let reads_memberships = def
                .atoms
                .iter()
                .any(|&a| self.atoms[a as usize].reads_memberships());
            if !def.is_static && !reads_memberships {
                let next = classes.len() as u32;
                let rule = HashedRule {
                    hash: def.facts.rule_hash,
                    rule: &def.rule,
                };
                class_of[slot] = *classes.entry(rule).or_insert(next);
            }
        }
        (class_of, classes.len())
    }

    /// Sets each atom's rules less the followers of a rule class, and each
    /// class lead's followers (see [`Catalog::class_followers`]), from
    /// `rank`, `rule_class` and `atom_rules`.
    fn set_class_leads(&mut self) {
        let mut lead_of_class = vec![None::<AudId>; self.rule_classes];
        let mut followers = vec![Vec::new(); self.audiences.len()];
        let mut class_lead: Vec<AudId> = (0..self.audiences.len() as AudId).collect();
        for &slot in &self.by_rank {
            let class = self.rule_class[slot as usize];
            if class == NO_RULE_CLASS {
                continue;
            }
            match lead_of_class[class as usize] {
                None => lead_of_class[class as usize] = Some(slot),
                Some(lead) => {
                    followers[lead as usize].push(slot);
                    class_lead[slot as usize] = lead;
                }
            }
        }
        self.class_lead = class_lead;
        let rule_class = &self.rule_class;
        let leads_or_alone = |&&(aud, _): &&(AudId, Polarity)| {
            let class = rule_class[aud as usize];
            class == NO_RULE_CLASS || lead_of_class[class as usize] == Some(aud)
        };
        self.atom_lead_rules = self
            .atom_rules
            .iter()
            .map(|rules| rules.iter().filter(leads_or_alone).copied().collect())
            .collect();
        self.class_followers = followers;
    }

    /// Sets retention and summary needs of the states an expression reads.
    fn mark_states(&mut self, expr: &CExpr) {
        match expr {
            CExpr::View(v) => {
                let v = self.views[*v as usize];
                let state = &mut self.states[v.state as usize];
                match v.window {
                    WindowDef::Last(w) => state.retention = state.retention.max(w),
                    WindowDef::All => {
                        state.archive = true;
                        if matches!(
                            v.func,
                            AggFunc::Distinct | AggFunc::MostFrequent | AggFunc::Unique
                        ) {
                            state.archive_freq = true;
                        }
                    }
                    WindowDef::Since(anchor) => {
                        // Kept sorted: the same set whatever the order of
                        // the definitions that read it.
                        if let Err(at) = state.since_anchors.binary_search(&anchor) {
                            state.since_anchors.insert(at, anchor);
                        }
                        self.states[anchor as usize].archive = true;
                    }
                }
            }
            // `since` reads the latest instant, which the summary keeps.
            CExpr::SinceEvent(s) => self.states[*s as usize].archive = true,
            _ => for_each_child(expr, |c| self.mark_states(c)),
        }
    }

    /// Puts each `and`'s and `or`'s cheaper operands first (a stable sort),
    /// so that one that decides it is evaluated before costlier ones: an
    /// atom reading only traits, memberships or computed traits costs a
    /// lookup, one reading events a walk of a window or a `since` base.
    /// Returns the rule's cost on that scale.
    fn order_by_cost(&self, rule: &mut RuleExpr) -> u32 {
        match rule {
            RuleExpr::Const(_) => 0,
            RuleExpr::Atom(a) => 1 + 4 * self.atoms[*a as usize].states.len() as u32,
            RuleExpr::Not(x) => self.order_by_cost(x),
            RuleExpr::And(xs) | RuleExpr::Or(xs) => {
                let mut costed: Vec<(u32, RuleExpr)> = std::mem::take(xs)
                    .into_iter()
                    .map(|mut x| (self.order_by_cost(&mut x), x))
                    .collect();
                costed.sort_by_key(|(cost, _)| *cost);
                let total = costed.iter().map(|(cost, _)| cost).sum();
                *xs = costed.into_iter().map(|(_, x)| x).collect();
                total
            }
        }
    }

    /// Splits a compiled rule into a formula over (interned) atoms.
    fn atomize(&mut self, expr: &CExpr, atoms: &mut Vec<AtomId>) -> RuleExpr {
        match expr {
            CExpr::Lit(Value::Bool(b)) => RuleExpr::Const(*b),
            CExpr::Not(x) => RuleExpr::Not(Box::new(self.atomize(x, atoms))),
            CExpr::And(xs) => RuleExpr::And(xs.iter().map(|x| self.atomize(x, atoms)).collect()),
            CExpr::Or(xs) => RuleExpr::Or(xs.iter().map(|x| self.atomize(x, atoms)).collect()),
            other => {
                let id = self.intern_atom(other);
                if !atoms.contains(&id) {
                    atoms.push(id);
                }
                RuleExpr::Atom(id)
            }
        }
    }

    fn intern_atom(&mut self, expr: &CExpr) -> AtomId {
        let key = format!("{expr:?}");
        if let Some(&id) = self.atom_ids.get(key.as_str()) {
            return id;
        }
        let mut reads = Reads::default();
        reads.collect(self, expr);
        let threshold = self.threshold_atom(expr).filter(|(view, op, _)| {
            let monotone = !matches!(op, CmpOp::Eq | CmpOp::Ne);
            monotone
                && matches!(
                    self.views[*view as usize].window,
                    WindowDef::Last(_) | WindowDef::All
                )
        });
        let id = self.atoms.len() as AtomId;
        self.atoms.push(AtomDef {
            timed: reads.timed,
            threshold,
            memberships: !reads.audiences.is_empty(),
            test: LeafTest::of(expr),
            parts: Arc::new(AtomParts {
                expr: expr.clone(),
                states: reads.states,
                traits: reads.traits,
                audiences: reads.audiences,
                computed: reads.computed,
            }),
        });
        self.atom_ids.insert(key.into(), id);
        id
    }

    fn intern_state(
        &mut self,
        event: &str,
        filter: Option<CExpr>,
        property: Option<&str>,
    ) -> StateId {
        let key = format!("{event:?}|{filter:?}|{property:?}");
        if let Some(&id) = self.state_ids.get(key.as_str()) {
            return id;
        }
        let id = self.states.len() as StateId;
        self.states.push(StateDef {
            event: Arc::from(event),
            filter: filter.map(Arc::new),
            property: property.map(Arc::from),
            retention: 0,
            since_anchors: Vec::new(),
            archive: false,
            archive_freq: false,
        });
        self.state_ids.insert(key.into(), id);
        id
    }

    /// The `sum` over the same state and window as `view` (an `avg`), if
    /// one was ever compiled (views outlive the rules that read them): the
    /// average is that sum divided by the count.
    pub fn sum_view_of(&self, view: ViewDef) -> Option<ViewId> {
        let sum = ViewDef {
            func: AggFunc::Sum,
            ..view
        };
        self.view_ids.get(&sum).copied()
    }

    fn intern_view(&mut self, view: ViewDef) -> ViewId {
        if let Some(&id) = self.view_ids.get(&view) {
            return id;
        }
        let id = self.views.len() as ViewId;
        self.views.push(view);
        self.view_ids.insert(view, id);
        id
    }
}

impl Catalog {
    /// `count(E, W)` or `count(E)` compared with a number, normalised with
    /// the count on the left: (view, op, k). A +1 of such a count flips at
    /// most the comparisons whose `k` it crosses.
    pub fn threshold_atom(&self, expr: &CExpr) -> Option<(ViewId, CmpOp, f64)> {
        let CExpr::Cmp(op, a, b) = expr else {
            return None;
        };
        let (view, op, k) = match (&**a, &**b) {
            (CExpr::View(v), CExpr::Lit(Value::Num(k))) => (*v, *op, *k),
            (CExpr::Lit(Value::Num(k)), CExpr::View(v)) => (*v, op.flipped(), *k),
            _ => return None,
        };
        let def = self.views[view as usize];
        let counts = def.func == AggFunc::Count && !matches!(def.window, WindowDef::Since(_));
        counts.then_some((view, op, k))
    }
}

struct Compiler<'a> {
    catalog: &'a mut Catalog,
    source: &'a str,
    references: BTreeSet<AudId>,
    traits: BTreeSet<TraitKey>,
    computed: BTreeSet<CtId>,
}

impl Compiler<'_> {
    fn compile(&mut self, e: &ast::Expr) -> Result<CExpr> {
        Ok(match &e.kind {
            ExprKind::Literal(l) => CExpr::Lit(literal(l)),
            ExprKind::List(_) => {
                return Err(type_error(
                    self.source,
                    e.span,
                    "a list is only allowed after 'in'".into(),
                ))
            }
            ExprKind::Trait(k) => {
                let key = self.catalog.trait_keys.intern(k);
                self.traits.insert(key);
                CExpr::Trait(key)
            }
            ExprKind::Computed(k) => match self.catalog.computed_by_key.get(k.as_str()) {
                Some(&ct) => {
                    self.computed.insert(ct);
                    CExpr::Computed(ct)
                }
                None => {
                    let message = self
                        .catalog
                        .computed_type(k)
                        .err()
                        .unwrap_or_else(|| format!("unknown computed trait '{k}'"));
                    return Err(type_error(self.source, e.span, message));
                }
            },
            ExprKind::Property(p) => CExpr::Property(Arc::from(p.as_str())),
            ExprKind::Aggregate {
                func,
                selector,
                property,
                window,
            } => {
                let state = self.selector_state(selector, property.as_deref())?;
                let window = match window {
                    Window::All => WindowDef::All,
                    Window::Last(ms) => {
                        if *ms <= 0 {
                            return Err(type_error(
                                self.source,
                                e.span,
                                "a window must be longer than 0".into(),
                            ));
                        }
                        WindowDef::Last(*ms)
                    }
                    Window::SinceEvent(anchor) => {
                        WindowDef::Since(self.selector_state(anchor, None)?)
                    }
                };
                let count_func = if *func == AggFunc::Did {
                    AggFunc::Count
                } else {
                    *func
                };
                let view = self.catalog.intern_view(ViewDef {
                    func: count_func,
                    state,
                    window,
                });
                if *func == AggFunc::Did {
                    CExpr::Cmp(
                        CmpOp::Ge,
                        Box::new(CExpr::View(view)),
                        Box::new(CExpr::Lit(Value::Num(1.0))),
                    )
                } else {
                    CExpr::View(view)
                }
            }
            ExprKind::Since(SinceTarget::Event(sel)) => {
                CExpr::SinceEvent(self.selector_state(sel, None)?)
            }
            ExprKind::Since(SinceTarget::Trait(k)) => {
                let key = self.catalog.trait_keys.intern(k);
                self.traits.insert(key);
                CExpr::SinceTrait(key)
            }
            ExprKind::MemberFor(key) => CExpr::MemberFor(self.audience_ref(key)?),
            ExprKind::InAudience(key) => CExpr::InAudience(self.audience_ref(key)?),
            ExprKind::Exists(inner) => CExpr::Exists(Box::new(self.compile(inner)?)),
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => CExpr::Not(Box::new(self.compile(expr)?)),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => match self.compile(expr)? {
                CExpr::Lit(Value::Num(n)) => CExpr::Lit(Value::Num(-n)),
                other => CExpr::Neg(Box::new(other)),
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.compile(lhs)?;
                match op {
                    BinaryOp::In | BinaryOp::NotIn => {
                        let ExprKind::List(items) = &rhs.kind else {
                            return Err(type_error(
                                self.source,
                                rhs.span,
                                "expected a list like [\"a\", \"b\"] after 'in'".into(),
                            ));
                        };
                        let mut values = Vec::with_capacity(items.len());
                        for item in items {
                            match self.compile(item)? {
                                CExpr::Lit(v) => values.push(v),
                                _ => {
                                    return Err(type_error(
                                        self.source,
                                        item.span,
                                        "list items must be literals".into(),
                                    ))
                                }
                            }
                        }
                        return Ok(CExpr::In(Box::new(a), values, *op == BinaryOp::NotIn));
                    }
                    _ => {}
                }
                let b = self.compile(rhs)?;
                match op {
                    BinaryOp::And => return Ok(flatten(a, b, true)),
                    BinaryOp::Or => return Ok(flatten(a, b, false)),
                    _ => {}
                }
                let (a, b) = (Box::new(a), Box::new(b));
                match op {
                    BinaryOp::And | BinaryOp::Or => unreachable!("handled above"),
                    BinaryOp::Eq => CExpr::Cmp(CmpOp::Eq, a, b),
                    BinaryOp::Ne => CExpr::Cmp(CmpOp::Ne, a, b),
                    BinaryOp::Lt => CExpr::Cmp(CmpOp::Lt, a, b),
                    BinaryOp::Le => CExpr::Cmp(CmpOp::Le, a, b),
                    BinaryOp::Gt => CExpr::Cmp(CmpOp::Gt, a, b),
                    BinaryOp::Ge => CExpr::Cmp(CmpOp::Ge, a, b),
                    BinaryOp::Contains => CExpr::Str(StrOp::Contains, a, b),
                    BinaryOp::StartsWith => CExpr::Str(StrOp::StartsWith, a, b),
                    BinaryOp::EndsWith => CExpr::Str(StrOp::EndsWith, a, b),
                    BinaryOp::Add => CExpr::Arith(ArithOp::Add, a, b),
                    BinaryOp::Sub => CExpr::Arith(ArithOp::Sub, a, b),
                    BinaryOp::Mul => CExpr::Arith(ArithOp::Mul, a, b),
                    BinaryOp::Div => CExpr::Arith(ArithOp::Div, a, b),
                    BinaryOp::In | BinaryOp::NotIn => unreachable!("handled above"),
                }
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => CExpr::Between(
                Box::new(self.compile(expr)?),
                Box::new(self.compile(low)?),
                Box::new(self.compile(high)?),
                *negated,
            ),
        })
    }

    fn selector_state(
        &mut self,
        selector: &ast::Selector,
        property: Option<&str>,
    ) -> Result<StateId> {
        let filter = match &selector.filter {
            Some(f) => Some(self.compile(f)?),
            None => None,
        };
        Ok(self.catalog.intern_state(&selector.event, filter, property))
    }

    fn audience_ref(&mut self, key: &str) -> Result<AudId> {
        let slot = self.catalog.audience(key)?;
        self.references.insert(slot);
        Ok(slot)
    }
}

fn type_article(t: Type) -> &'static str {
    match t {
        Type::Bool => "a condition",
        Type::Number => "a number",
        Type::String => "a string",
        Type::Duration => "a duration",
        Type::List => "a list",
        Type::Any => "a dynamic value",
    }
}

fn flatten(a: CExpr, b: CExpr, and: bool) -> CExpr {
    let mut items = Vec::new();
    for e in [a, b] {
        match (e, and) {
            (CExpr::And(inner), true) | (CExpr::Or(inner), false) => items.extend(inner),
            (other, _) => items.push(other),
        }
    }
    if and {
        CExpr::And(items)
    } else {
        CExpr::Or(items)
    }
}

fn literal(l: &Literal) -> Value {
    match l {
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Number(n) => Value::Num(*n),
        Literal::String(s) => Value::Str(s.as_str().into()),
        Literal::Duration(d) => Value::Dur(*d),
    }
}

/// How a rule depends on one of its atoms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// Only under an even number of `not`s: the atom turning true can only
    /// turn the rule true, and turning false can only turn it false.
    Positive,
    /// Only under an odd number of `not`s: the reverse.
    Negative,
    /// Both: any flip may move the rule either way.
    Mixed,
}

impl Polarity {
    /// Whether an atom flip (to `now_true`) can change a rule whose current
    /// membership is `member`.
    pub fn may_change(self, now_true: bool, member: bool) -> bool {
        match self {
            Polarity::Positive => now_true != member,
            Polarity::Negative => now_true == member,
            Polarity::Mixed => true,
        }
    }

    /// The rules of `rules` (an atom's, sorted by slot) that its flip to
    /// `now_true` may move, each with whether the user is a member of it.
    /// `memberships` is sorted by slot too, so one merge walk answers every
    /// rule: an atom such as `did("Email Opened", 14d)` is in dozens of
    /// rules, and a search per rule was about a quarter of a timer's cost.
    pub fn movable_rules<'a>(
        rules: &'a [(AudId, Polarity)],
        memberships: Slots<'a>,
        now_true: bool,
    ) -> impl Iterator<Item = (AudId, bool)> + 'a {
        debug_assert!(rules.is_sorted_by_key(|(aud, _)| *aud));
        // Nearly every list is narrow: its slots are read as they are, one
        // unit each, instead of through the width.
        let narrow = memberships.narrow();
        let mut next = 0;
        rules.iter().filter_map(move |&(aud, polarity)| {
            let member = match narrow {
                Some(units) => {
                    while units.get(next).is_some_and(|&m| AudId::from(m) < aud) {
                        next += 1;
                    }
                    units.get(next).is_some_and(|&m| AudId::from(m) == aud)
                }
                None => {
                    while memberships.get(next).is_some_and(|m| m < aud) {
                        next += 1;
                    }
                    memberships.get(next) == Some(aud)
                }
            };
            polarity
                .may_change(now_true, member)
                .then_some((aud, member))
        })
    }
}

/// The literals of `rule` when it is a conjunction of them (nested `and`s
/// flattened), each atom with the truth the rule needs of it.
fn conjunction_literals(rule: &RuleExpr) -> Option<Box<[(AtomId, bool)]>> {
    fn collect(rule: &RuleExpr, out: &mut Vec<(AtomId, bool)>) -> bool {
        if let RuleExpr::And(xs) = rule {
            return xs.iter().all(|x| collect(x, out));
        }
        rule.literal().map(|literal| out.push(literal)).is_some()
    }
    let mut literals = Vec::new();
    collect(rule, &mut literals).then(|| literals.into_boxed_slice())
}

/// The polarity of `atom` in `rule`.
pub fn polarity(rule: &RuleExpr, atom: AtomId) -> Polarity {
    fn walk(r: &RuleExpr, atom: AtomId, negated: bool, pos: &mut bool, neg: &mut bool) {
        match r {
            RuleExpr::Const(_) => {}
            RuleExpr::Atom(a) if *a == atom => {
                *(if negated { &mut *neg } else { &mut *pos }) = true
            }
            RuleExpr::Atom(_) => {}
            RuleExpr::Not(x) => walk(x, atom, !negated, pos, neg),
            RuleExpr::And(xs) | RuleExpr::Or(xs) => {
                xs.iter().for_each(|x| walk(x, atom, negated, pos, neg))
            }
        }
    }
    let (mut pos, mut neg) = (false, false);
    walk(rule, atom, false, &mut pos, &mut neg);
    match (pos, neg) {
        (true, false) => Polarity::Positive,
        (false, true) => Polarity::Negative,
        _ => Polarity::Mixed,
    }
}

/// The direct child expressions.
pub fn children(expr: &CExpr) -> smallvec::SmallVec<[&CExpr; 3]> {
    let mut out = smallvec::SmallVec::new();
    match expr {
        CExpr::Lit(_)
        | CExpr::Trait(_)
        | CExpr::Property(_)
        | CExpr::View(_)
        | CExpr::SinceEvent(_)
        | CExpr::SinceTrait(_)
        | CExpr::MemberFor(_)
        | CExpr::InAudience(_)
        | CExpr::Computed(_) => {}
        CExpr::Exists(x) | CExpr::Not(x) | CExpr::Neg(x) | CExpr::In(x, _, _) => out.push(&**x),
        CExpr::And(xs) | CExpr::Or(xs) => out.extend(xs.iter()),
        CExpr::Arith(_, a, b) | CExpr::Cmp(_, a, b) | CExpr::Str(_, a, b) => {
            out.extend([&**a, &**b])
        }
        CExpr::Between(a, b, c, _) => out.extend([&**a, &**b, &**c]),
    }
    out
}

/// Calls `f` on every direct child expression.
pub fn for_each_child(expr: &CExpr, f: impl FnMut(&CExpr)) {
    children(expr).into_iter().for_each(f);
}

/// What an atom reads.
#[derive(Default)]
struct Reads {
    states: Vec<StateId>,
    traits: Vec<TraitKey>,
    audiences: Vec<AudId>,
    computed: Vec<CtId>,
    timed: bool,
}

impl Reads {
    fn add_state(&mut self, s: StateId) {
        if !self.states.contains(&s) {
            self.states.push(s);
        }
    }

    fn collect(&mut self, cat: &Catalog, expr: &CExpr) {
        match expr {
            CExpr::View(v) => {
                let v = cat.views[*v as usize];
                self.add_state(v.state);
                match v.window {
                    WindowDef::Last(_) => self.timed = true,
                    WindowDef::Since(anchor) => self.add_state(anchor),
                    WindowDef::All => {}
                }
            }
            CExpr::SinceEvent(s) => {
                self.add_state(*s);
                self.timed = true;
            }
            CExpr::Trait(k) | CExpr::SinceTrait(k) => {
                if !self.traits.contains(k) {
                    self.traits.push(*k);
                }
                self.timed |= matches!(expr, CExpr::SinceTrait(_));
            }
            CExpr::MemberFor(a) | CExpr::InAudience(a) => {
                if !self.audiences.contains(a) {
                    self.audiences.push(*a);
                }
                self.timed |= matches!(expr, CExpr::MemberFor(_));
            }
            // The value is kept per user and changed by the computed trait's
            // own updates and timers, which re-evaluate the rules reading it.
            CExpr::Computed(c) => {
                if !self.computed.contains(c) {
                    self.computed.push(*c);
                }
            }
            _ => for_each_child(expr, |c| self.collect(cat, c)),
        }
    }
}

#[cfg(test)]
impl Catalog {
    /// Parses rule `src` and defines it as audience `key` (tests).
    pub(crate) fn define_rule(&mut self, key: &str, src: &str) -> AudId {
        let ast = crate::rules::parse_rule(src).expect("rule parses");
        self.define(key, src, ast).expect("rule defines")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience_list::AudienceList;
    use crate::profile::Stamped;
    use proptest::prelude::*;

    /// A definition that fails to compile leaves no state, view or trait
    /// key behind, however far it got: the same keys get the same ids
    /// afterwards.
    #[test]
    fn a_failed_definition_leaves_no_trait_key_state_or_view() {
        let mut cat = Catalog::default();
        cat.define_rule("kept", r#"trait.plan == "pro" and count("A", 7d) >= 2"#);
        let (keys, states, views) = (cat.trait_keys.len(), cat.states.len(), cat.views.len());
        for src in [
            r#"trait.fresh > 1 and count("B", 3d) >= 1 and in_audience("nope")"#,
            r#"trait.fresh.deeper == "x" and sum("C", revenue, 3d) > 5 and member_for("nope") > 1d"#,
        ] {
            let ast = crate::rules::parse_rule(src).expect("rule parses");
            assert!(cat.define("failing", src, ast).is_err(), "{src}");
            assert_eq!(cat.trait_keys.len(), keys, "{src}");
            assert_eq!(cat.trait_keys.get("fresh"), None);
            assert_eq!((cat.states.len(), cat.views.len()), (states, views));
        }
        assert_eq!(cat.trait_keys.get("plan"), Some(0));
        cat.define_rule("fresh", "trait.fresh > 1");
        assert_eq!(cat.trait_keys.get("fresh"), Some(keys as u32));
        assert_eq!(cat.trait_keys.name(keys as u32), "fresh");
    }

    /// Audiences defined one at a time are added to the indexes in place
    /// when nothing of theirs was read by a removed rule, and the indexes
    /// are then those a rebuild makes; a rule reviving an atom or a state
    /// of a removed one gets a rebuild.
    #[test]
    fn new_audiences_extend_the_indexes_as_a_rebuild_makes_them() {
        let mut cat = Catalog::default();
        let ct = crate::rules::compile_value(r#"count("Order Completed", 30d)"#).expect("compiles");
        cat.define_computed("orders_30d", r#"count("Order Completed", 30d)"#, ct.0, ct.1)
            .expect("computed trait");
        let define = |cat: &mut Catalog, key: &str, src: &str| {
            let sizes = cat.indexed_sizes();
            let ast = crate::rules::parse_rule(src).expect("rule parses");
            let slot = cat.define_unindexed(key, src, ast).expect("defines");
            let in_place = cat.index_new_audience(slot, sizes);
            if !in_place {
                cat.rebuild_indexes();
            }
            cat.assert_indexes_as_rebuilt();
            in_place
        };
        // New audiences whose atoms and states are new or already live.
        let rules = [
            ("vip", r#"sum("Order Completed", revenue, 365d) > 300"#),
            ("vip_copy", r#"sum("Order Completed", revenue, 365d) > 300"#),
            (
                "vip_more",
                r#"sum("Order Completed", revenue, 365d) > 500 and trait.plan == "pro""#,
            ),
            ("lapsed", r#"since("Order Completed") between 60d and 120d"#),
            (
                "lapsed_more",
                r#"since("Order Completed") between 90d and 200d"#,
            ),
            (
                "carts",
                r#"since("Checkout Started") between 2h and 24h and count("Order Completed", since "Checkout Started") == 0"#,
            ),
            (
                "shoes",
                r#"count("Product Viewed" where category == "shoes", 7d) >= 2 and trait.country in ["US", "CA"]"#,
            ),
            (
                "shoes_3",
                r#"count("Product Viewed" where category == "shoes", 7d) >= 3"#,
            ),
            (
                "new_users",
                r#"since(trait.created_at) < 14d and not did("Order Completed")"#,
            ),
            ("not_vip", r#"not in_audience("vip") and trait.ltv > 100"#),
            (
                "loyal",
                r#"member_for("vip") > 30d or computed.orders_30d >= 4"#,
            ),
            (
                "ltv",
                r#"trait.ltv between 100 and 1000 and trait.plan != "basic""#,
            ),
            ("empty_true", r#"not did("Email Opened", 30d)"#),
        ];
        for (key, src) in rules {
            assert!(define(&mut cat, key, src), "{key}");
        }
        // A replacement, and rules reading what only removed rules read.
        assert!(!define(
            &mut cat,
            "shoes_3",
            r#"count("Product Viewed" where category == "shoes", 7d) >= 4"#
        ));
        cat.remove("lapsed_more").expect("removed");
        assert!(!define(
            &mut cat,
            "lapsed_again",
            r#"since("Order Completed") between 90d and 200d"#
        ));
        cat.remove("empty_true").expect("removed");
        assert!(!define(&mut cat, "opened", r#"did("Email Opened", 30d)"#));
        assert!(define(
            &mut cat,
            "after",
            r#"did("Email Opened", 30d) and trait.plan == "pro""#
        ));
        // A new view over a live state; a new atom in the timer group a
        // removed rule's atom leads.
        assert!(define(
            &mut cat,
            "shoes_30d",
            r#"count("Product Viewed" where category == "shoes", 30d) >= 1"#
        ));
        let lapsed = cat.audiences[cat.audience("lapsed").expect("defined") as usize].clone();
        let lead = cat.timer_lead[lapsed.expect("live").atoms[0] as usize];
        cat.remove("lapsed").expect("removed");
        assert!(define(
            &mut cat,
            "lapsed_soon",
            r#"since("Order Completed") between 30d and 45d"#
        ));
        let soon = cat.audiences[cat.audience("lapsed_soon").expect("defined") as usize].clone();
        assert_eq!(cat.timer_lead[soon.expect("live").atoms[0] as usize], lead);
        assert!(
            cat.atom_rules[lead as usize].is_empty(),
            "the lead is a removed rule's"
        );
        // After a batch that failed part way, the indexes are not extended.
        let items = ["ok_1", "bad"].map(|key| {
            let src = if key == "bad" {
                "in_audience(\"nope\")"
            } else {
                "trait.plan == \"free\""
            };
            (
                key.to_owned(),
                src.to_owned(),
                crate::rules::parse_rule(src).expect("parses"),
            )
        });
        assert!(cat.define_many(items.into()).is_err());
        assert!(!define(&mut cat, "ok_2", r#"trait.plan == "team""#));
        assert_eq!(
            cat.class_lead[cat.audience("vip_copy").expect("defined") as usize],
            0
        );
    }

    /// A trait atom's rules for a profile without events leave out those
    /// that need an event.
    #[test]
    fn eventless_rules_leave_out_those_needing_events() {
        let mut cat = Catalog::default();
        let rules = [
            ("needs", r#"trait.plan == "pro" and did("X", 7d)"#),
            ("traits", r#"trait.plan == "pro""#),
            ("either", r#"trait.plan == "pro" or did("X", 7d)"#),
        ];
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        let slot = |key: &str| cat.audience(key).unwrap();
        let atom = cat.audiences[slot("traits") as usize]
            .as_ref()
            .unwrap()
            .atoms[0];
        let auds = |rules: &[(AudId, Polarity)]| rules.iter().map(|&(a, _)| a).collect::<Vec<_>>();
        assert_eq!(
            auds(&cat.atom_lead_rules[atom as usize]),
            vec![slot("needs"), slot("traits"), slot("either")]
        );
        assert_eq!(
            auds(&cat.atom_lead_rules_eventless[atom as usize]),
            vec![slot("traits"), slot("either")]
        );
    }

    /// An `and` or `or` reads its trait operands before those walking
    /// events, and a conjunction of literals is kept as one, in that order;
    /// copies written in another order are one rule class.
    #[test]
    fn operands_are_ordered_by_cost_and_conjunctions_kept_as_literals() {
        let mut cat = Catalog::default();
        let rules = [
            (
                "a",
                r#"not did("Order Completed", 7d) and trait.plan != "free""#,
            ),
            (
                "b",
                r#"trait.plan != "free" and not did("Order Completed", 7d)"#,
            ),
            ("c", r#"did("X", 7d) or trait.ltv > 500"#),
        ];
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        let def = |key: &str| {
            cat.audiences[cat.audience(key).unwrap() as usize]
                .as_ref()
                .unwrap()
        };
        let (a, b) = (def("a"), def("b"));
        assert_eq!(a.rule, b.rule);
        let formula = &cat.formulas[cat.audience("a").unwrap() as usize];
        let Formula::Literals(literals) = formula else {
            panic!("a conjunction of literals: {formula:?}")
        };
        assert_eq!(literals.len(), 2);
        assert!(cat.atoms[literals[0].0 as usize].states.is_empty() && literals[0].1);
        assert!(!cat.atoms[literals[1].0 as usize].states.is_empty() && !literals[1].1);
        let c = def("c");
        assert!(matches!(
            cat.formulas[cat.audience("c").unwrap() as usize],
            Formula::Rule(_)
        ));
        let RuleExpr::Or(operands) = &c.rule else {
            panic!("an or: {:?}", c.rule)
        };
        assert!(
            matches!(operands[0], RuleExpr::Atom(x) if cat.atoms[x as usize].states.is_empty())
        );
    }

    /// An event's states decide their filters on properties looked up once
    /// as the filter expressions decide them; a filter of another shape
    /// (an `or`) is left to its expression.
    #[test]
    fn compiled_filters_decide_as_the_filter() {
        use crate::eval::{eval_bool, PropsEnv};
        let mut cat = Catalog::default();
        let src = r#"count("V" where category == "shoes" and context.device.type in ["ios", "web"], 7d) >= 1
            or count("V" where price > 10, 7d) >= 1
            or count("V" where category == "a" or price between 1 and 3, 7d) >= 1
            or sum("V" where exists(category), price, 7d) > 1"#;
        cat.define_rule("a", src);
        let states = &cat.by_event["V"];
        assert_eq!(states.states.len(), 4);
        assert_eq!(states.tests.iter().filter(|t| t.is_some()).count(), 3);
        let props = |category: Option<&str>, device: &str, price: f64| {
            let mut p: Vec<(Arc<str>, Value)> = vec![
                ("context.device.type".into(), Value::Str(device.into())),
                ("price".into(), Value::Num(price)),
            ];
            if let Some(c) = category {
                p.push(("category".into(), Value::Str(c.into())));
            }
            p
        };
        for category in [None, Some("shoes"), Some("a")] {
            for device in ["ios", "android"] {
                for price in [2.0, 11.0] {
                    let p = props(category, device, price);
                    let found: Vec<Option<&Value>> = states
                        .properties
                        .iter()
                        .map(|name| p.iter().find(|(k, _)| k == name).map(|(_, v)| v))
                        .collect();
                    for (i, &state) in states.states.iter().enumerate() {
                        let filter = cat.states[state as usize].filter.as_ref().unwrap();
                        if let Some(tests) = &states.tests[i] {
                            let compiled = tests.iter().all(|(at, t)| t.holds(found[*at]));
                            assert_eq!(compiled, eval_bool(filter, &PropsEnv(&p)));
                        }
                    }
                }
            }
        }
    }

    /// Audiences with the same rule share a class, whatever their keys and
    /// the order of definition; a rule reading memberships has none, and a
    /// removed slot loses its class.
    #[test]
    fn identical_rules_share_a_class() {
        let mut cat = Catalog::default();
        let rules = [
            ("a", r#"did("Order Completed", 30d)"#),
            ("b", r#"trait.plan == "pro""#),
            ("c", r#"did("Order Completed", 30d)"#),
            ("d", r#"in_audience("b") and did("Order Completed", 30d)"#),
            ("e", r#"in_audience("b") and did("Order Completed", 30d)"#),
            ("f", r#"trait.plan == "pro""#),
        ];
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        let class = |cat: &Catalog, key: &str| cat.rule_class[cat.audience(key).unwrap() as usize];
        assert_eq!(class(&cat, "a"), class(&cat, "c"));
        assert_eq!(class(&cat, "b"), class(&cat, "f"));
        assert_ne!(class(&cat, "a"), class(&cat, "b"));
        assert_eq!(class(&cat, "d"), NO_RULE_CLASS);
        assert_eq!(class(&cat, "e"), NO_RULE_CLASS);
        assert_eq!(cat.rule_classes, 2);
        // The lowest rank leads; an atom's flip queues the leads and the
        // rules without a class.
        let slot = |cat: &Catalog, key: &str| cat.audience(key).unwrap();
        let followers =
            |cat: &Catalog, key: &str| cat.class_followers[slot(cat, key) as usize].clone();
        assert_eq!(followers(&cat, "a"), [slot(&cat, "c")]);
        assert_eq!(followers(&cat, "b"), [slot(&cat, "f")]);
        assert!(followers(&cat, "c").is_empty() && followers(&cat, "d").is_empty());
        // `did(...)`, the one atom of "c" (and of "a").
        let did = cat.audiences[slot(&cat, "c") as usize]
            .as_ref()
            .unwrap()
            .atoms[0];
        let queued = |cat: &Catalog| -> Vec<AudId> {
            cat.atom_lead_rules[did as usize]
                .iter()
                .map(|&(aud, _)| aud)
                .collect()
        };
        assert_eq!(
            queued(&cat),
            [slot(&cat, "a"), slot(&cat, "d"), slot(&cat, "e")]
        );
        let removed = cat.remove("a").unwrap();
        assert_eq!(cat.rule_class[removed as usize], NO_RULE_CLASS);
        assert!(followers(&cat, "c").is_empty());
        assert_eq!(
            queued(&cat),
            [slot(&cat, "c"), slot(&cat, "d"), slot(&cat, "e")]
        );
        assert_ne!(class(&cat, "c"), NO_RULE_CLASS);
    }

    #[test]
    fn ladder_atoms_of_one_source_share_a_timer_by_up_to_sixty_four() {
        let mut cat = Catalog::default();
        for i in 1..=70 {
            cat.define_rule(&format!("s{i}"), &format!(r#"since("E") < {i}h"#));
        }
        for i in 1..=5 {
            cat.define_rule(
                &format!("n{i}"),
                &format!(r#"since("E") in [{i}h, {}h]"#, i + 10),
            );
        }
        let atom = |cat: &Catalog, key: &str| {
            cat.audiences[cat.audience(key).unwrap() as usize]
                .as_ref()
                .unwrap()
                .atoms[0]
        };
        let lead = |cat: &Catalog, key: &str| cat.timer_lead[atom(cat, key) as usize];
        let first = atom(&cat, "s1");
        assert!(cat.timer_ladder[first as usize].is_some());
        assert!((1..=64).all(|i| lead(&cat, &format!("s{i}")) == first));
        let second = atom(&cat, "s65");
        assert!((65..=70).all(|i| lead(&cat, &format!("s{i}")) == second));
        // Tests a ladder cannot hold go in groups of four of their own.
        let other = atom(&cat, "n1");
        assert_eq!(cat.timer_ladder[other as usize], None);
        assert!((1..=4).all(|i| lead(&cat, &format!("n{i}")) == other));
        assert_eq!(lead(&cat, "n5"), atom(&cat, "n5"));
        assert_eq!(cat.timer_group[first as usize].len(), 64);
    }

    #[test]
    fn leaf_groups_list_the_timers_of_their_timed_atoms_once() {
        let mut cat = Catalog::default();
        // Interleaved, so that the atoms' timers in id order alternate:
        // the ladder's, and the groups of four of the tests it cannot hold.
        for i in 1..=5 {
            cat.define_rule(&format!("s{i}"), &format!(r#"since("E") < {i}h"#));
            cat.define_rule(
                &format!("n{i}"),
                &format!(r#"since("E") in [{i}h, {}h]"#, i + 10),
            );
        }
        // An all-time sum never lapses: its atoms have no timer.
        cat.define_rule("a1", r#"sum("E", x) > 5"#);
        cat.define_rule("a2", r#"sum("E", x) > 7"#);
        let atom = |key: &str| {
            cat.audiences[cat.audience(key).unwrap() as usize]
                .as_ref()
                .unwrap()
                .atoms[0]
        };
        let group_of = |a: AtomId| {
            cat.leaf_groups
                .iter()
                .find(|g| g.atoms.contains(&a))
                .unwrap()
        };
        let since = group_of(atom("s1"));
        assert_eq!(since.atoms.len(), 10);
        let in_id_order: Vec<AtomId> = since
            .atoms
            .iter()
            .map(|&a| cat.timer_lead[a as usize])
            .collect();
        assert!(!in_id_order.is_sorted(), "{in_id_order:?}");
        // The ladder's timer, the first four `in` tests', the fifth's.
        assert_eq!(since.timed_leads, [atom("s1"), atom("n1"), atom("n5")]);
        let sum = group_of(atom("a1"));
        assert_eq!(sum.atoms, [atom("a1"), atom("a2")]);
        assert!(sum.atoms.iter().all(|&a| !cat.atoms[a as usize].timed));
        assert!(sum.timed_leads.is_empty());
    }

    #[test]
    fn tests_of_one_view_or_since_are_grouped_by_leaf() {
        let mut cat = Catalog::default();
        let rules = [
            ("a", r#"since("Checkout Started") between 3h and 2d"#),
            (
                "b",
                r#"since("Checkout Started") < 6h and count("Product Viewed", 7d) >= 3"#,
            ),
            ("c", r#"sum("Order Completed", revenue, 30d) > 100"#),
            (
                "d",
                r#"sum("Order Completed", revenue, 30d) >= 300 or trait.plan == "pro""#,
            ),
            (
                "e",
                r#"count("Product Viewed", since "Order Completed") >= 2"#,
            ),
            (
                "f",
                r#"sum("Order Completed", revenue, 30d) > count("Order Completed", 30d)"#,
            ),
        ];
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        let leaf_of = |a: AtomId| match &cat.atoms[a as usize].test {
            Some((leaf @ (CExpr::View(_) | CExpr::SinceEvent(_)), _)) => Some(leaf.clone()),
            _ => None,
        };
        let mut grouped = 0;
        for (s, idx) in cat.state_index.iter().enumerate() {
            let mut in_groups: Vec<AtomId> = Vec::new();
            for &g in &idx.leaf_groups {
                let group = &cat.leaf_groups[g as usize];
                for &a in &group.atoms {
                    assert_eq!(leaf_of(a).as_ref(), Some(&group.leaf));
                    assert!(cat.atoms[a as usize].states.contains(&(s as StateId)));
                    in_groups.push(a);
                }
            }
            // Every atom of the state is in exactly one of the three lists.
            for &a in &idx.all {
                let thresholds = idx.thresholds.iter().flat_map(|(_, t)| t.iter());
                let listed = [
                    idx.general.contains(&a),
                    in_groups.contains(&a),
                    thresholds.clone().any(|t| t.atom == a),
                ];
                assert_eq!(listed.iter().filter(|&&l| l).count(), 1, "atom {a}");
                assert_eq!(
                    in_groups.contains(&a),
                    !idx.general.contains(&a)
                        && leaf_of(a).is_some()
                        && !thresholds.clone().any(|t| t.atom == a)
                );
            }
            grouped += in_groups.len();
        }
        // The two `since("Checkout Started")` tests share a group, and so
        // do the two comparisons of the sum; `count(..., since "Order
        // Completed")` (no threshold: its count restarts) is a group of its
        // state and of its anchor's; the comparison of two views is
        // general.
        let since = cat
            .leaf_groups
            .iter()
            .find(|g| matches!(g.leaf, CExpr::SinceEvent(_)))
            .unwrap();
        assert_eq!(since.atoms.len(), 2);
        assert_eq!(
            cat.leaf_groups
                .iter()
                .filter(|g| g.atoms.len() == 2)
                .count(),
            2
        );
        assert_eq!(grouped, 6);
        assert_eq!(
            cat.state_index
                .iter()
                .map(|i| i.general.len())
                .sum::<usize>(),
            2
        );
    }

    proptest! {
        /// The merge walk gives every rule the answer a search of the
        /// memberships per rule gives.
        #[test]
        fn movable_rules_match_a_search_per_rule(
            rules in proptest::collection::btree_map(prop_oneof![0u32..40, 70_000u32..70_010], 0u8..3, 0..20),
            memberships in proptest::collection::btree_set(prop_oneof![0u32..40, 70_000u32..70_010], 0..20),
            now_true: bool,
        ) {
            let rules: Vec<(AudId, Polarity)> = rules
                .into_iter()
                .map(|(aud, p)| (aud, [Polarity::Positive, Polarity::Negative, Polarity::Mixed][p as usize]))
                .collect();
            let memberships: Vec<AudId> = memberships.into_iter().collect();
            let stamped: Vec<Stamped> = memberships.iter().map(|&a| Stamped::new(a, 0)).collect();
            let list = AudienceList::from_sorted(&stamped);
            let walked: Vec<(AudId, bool)> =
                Polarity::movable_rules(&rules, list.slots(), now_true).collect();
            let searched: Vec<(AudId, bool)> = rules
                .iter()
                .map(|&(aud, p)| (aud, p, memberships.binary_search(&aud).is_ok()))
                .filter(|&(_, p, member)| p.may_change(now_true, member))
                .map(|(aud, _, member)| (aud, member))
                .collect();
            prop_assert_eq!(walked, searched);
        }
    }
}
