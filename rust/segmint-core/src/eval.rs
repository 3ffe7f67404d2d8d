//! Evaluation of compiled expressions for one user at one instant, and the
//! next instant at which time alone can change a value.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::audience_list::PassFlips;
use crate::catalog::{
    ArithOp, AtomDef, AtomId, AudId, AudienceDef, CExpr, Catalog, CmpOp, CtId, Formula, LeafTest,
    RuleExpr, StateId, StrOp, TimerLadder, TraitKey, ViewDef, WindowDef,
};
use crate::profile::{Memberships, UserData};
use crate::rules::ast::AggFunc;
use crate::state::{aggregate, numeric_summary, window_bounds, window_range, Entries, Summary};
use crate::time::{ceil_to, floor_to, parse_timestamp, Millis};
use crate::value::Value;

/// Where leaf values come from. A leaf is borrowed where the value is
/// stored (traits, properties) and owned where it is computed (views,
/// durations), so that evaluation clones no strings.
pub trait Env {
    /// The value of a leaf node (trait, property, view, since, membership).
    fn leaf(&self, e: &CExpr) -> Option<Cow<'_, Value>>;

    /// `in_audience(aud)`: whether [`Env::leaf`] of it is
    /// `Some(Value::Bool(true))`, which an environment that knows
    /// memberships answers without building a value (an override must
    /// give that same answer).
    fn in_audience(&self, aud: AudId) -> bool {
        matches!(
            self.leaf(&CExpr::InAudience(aud)).as_deref(),
            Some(Value::Bool(true))
        )
    }
}

/// A user at an instant.
pub struct UserEnv<'a> {
    /// The compiled catalog.
    pub cat: &'a Catalog,
    /// The user's data.
    pub user: &'a UserData,
    /// The instant.
    pub now: Millis,
    /// The granularity.
    pub granularity: Millis,
    /// Where view values computed for this user at this instant are kept.
    views: Option<&'a RefCell<ViewMemo>>,
    /// The user's traits unpacked, sorted by key, when the caller has them
    /// (see [`UserEnv::with_traits`]).
    traits: Option<&'a [(TraitKey, Value)]>,
    /// Memberships flipped in the pass and not yet in the user's list (see
    /// [`UserEnv::with_flips`]).
    flips: Option<&'a PassFlips>,
    /// The user's shard's memberships, which say which slots share
    /// another's list entries (see [`UserEnv::with_shared`]).
    shared: Option<&'a Memberships>,
}

/// The values of the views computed for one user at one instant, within a
/// pass: while its states stay as they are, or change in ways the caller
/// carries the values over (see [`ViewMemo::carry`]). A dozen rules
/// compare the same `sum("Order Completed", revenue, 365d)` with different
/// constants, and each comparison would otherwise walk the window's
/// entries again.
///
/// Boxed, and allocated by the first [`ViewMemo::begin`]: a shard lends
/// its memo to every evaluation in a `RefCell` it moves it into and back,
/// which moved the whole table twice per rule evaluated.
#[derive(Debug, Clone, Default)]
pub struct ViewMemo(Option<Box<ViewPass>>);

/// A [`ViewMemo`]'s table.
#[derive(Debug, Clone, Default)]
struct ViewPass {
    pass: u32,
    /// The user (by address) and instant of the pass: an environment for
    /// another reads nothing from here.
    key: (usize, Millis),
    /// The pass in which each view's value was computed, by view id.
    stamps: Vec<u32>,
    values: Vec<Option<Value>>,
    /// The instants `since(E)` counts from, by state id, with the pass
    /// they were found in: sixty `since("Order Completed") between ...`
    /// atoms read one.
    event_bases: Vec<(u32, Option<Millis>)>,
    /// The same for `since(trait.x)`, by trait key (the timestamp string
    /// parsed once a pass, not once an atom).
    trait_bases: Vec<(u32, Option<Millis>)>,
}

/// Which instant a duration leaf counts from.
#[derive(Debug, Clone, Copy)]
enum Base {
    /// `since(E)`, by state.
    Event(StateId),
    /// `since(trait.x)`, by trait key.
    Trait(u32),
}

impl ViewMemo {
    /// Drops the memo; one never begun (the common case where it was lent
    /// and taken back) costs nothing, not even the call to drop its table.
    #[inline]
    pub fn discard(self) {
        match self.0 {
            Some(pass) => drop(pass),
            None => std::mem::forget(self),
        }
    }

    /// Forgets every value and opens a pass for `user` at `now` (the
    /// caller begins a new one once the user's entries change in a way
    /// that can move a view's value at `now`, unless it carries the values
    /// over the change with [`ViewMemo::carry`]).
    pub fn begin(&mut self, views: usize, user: &UserData, now: Millis) {
        self.0.get_or_insert_default().begin(views, user, now);
    }

    fn get(&self, view: u32, key: (usize, Millis)) -> Option<&Option<Value>> {
        self.0.as_deref()?.get(view, key)
    }

    fn set(&mut self, view: u32, key: (usize, Millis), value: Option<Value>) {
        if let Some(pass) = self.0.as_deref_mut() {
            pass.set(view, key, value);
        }
    }

    /// Carries a view's value, if computed in this pass, over a change of
    /// the user's entries: `update` gives the new value from the old one,
    /// or None where it cannot, and the view is then computed afresh when
    /// next read. (The pass stays open: values of views the change did not
    /// touch stay known.)
    pub fn carry(
        &mut self,
        view: u32,
        update: impl FnOnce(&Option<Value>) -> Option<Option<Value>>,
    ) {
        if let Some(pass) = self.0.as_deref_mut() {
            pass.carry(view, update);
        }
    }

    /// Forgets the `since(E)` base of `state` found in this pass.
    pub fn forget_event_base(&mut self, state: StateId) {
        if let Some(pass) = self.0.as_deref_mut() {
            pass.forget_event_base(state);
        }
    }

    fn get_base(&self, base: Base, key: (usize, Millis)) -> Option<Option<Millis>> {
        self.0.as_deref()?.get_base(base, key)
    }

    fn set_base(&mut self, base: Base, key: (usize, Millis), at: Option<Millis>) {
        if let Some(pass) = self.0.as_deref_mut() {
            pass.set_base(base, key, at);
        }
    }
}

impl ViewPass {
    fn begin(&mut self, views: usize, user: &UserData, now: Millis) {
        self.pass = self.pass.wrapping_add(1);
        if self.pass == 0 {
            self.stamps.fill(0);
            self.event_bases.fill((0, None));
            self.trait_bases.fill((0, None));
            self.pass = 1;
        }
        if self.stamps.len() < views {
            self.stamps.resize(views, 0);
            self.values.resize(views, None);
        }
        self.key = (std::ptr::from_ref(user) as usize, now);
    }

    fn get(&self, view: u32, key: (usize, Millis)) -> Option<&Option<Value>> {
        let fresh = key == self.key && self.stamps.get(view as usize) == Some(&self.pass);
        fresh.then(|| &self.values[view as usize])
    }

    fn set(&mut self, view: u32, key: (usize, Millis), value: Option<Value>) {
        if key == self.key && (view as usize) < self.stamps.len() {
            self.stamps[view as usize] = self.pass;
            self.values[view as usize] = value;
        }
    }

    fn carry(&mut self, view: u32, update: impl FnOnce(&Option<Value>) -> Option<Option<Value>>) {
        let i = view as usize;
        if self.stamps.get(i) != Some(&self.pass) {
            return;
        }
        match update(&self.values[i]) {
            Some(value) => self.values[i] = value,
            None => self.stamps[i] = 0,
        }
    }

    fn forget_event_base(&mut self, state: StateId) {
        if let Some(entry) = self.event_bases.get_mut(state as usize) {
            entry.0 = 0;
        }
    }

    fn bases(&self, base: Base) -> (&Vec<(u32, Option<Millis>)>, usize) {
        match base {
            Base::Event(s) => (&self.event_bases, s as usize),
            Base::Trait(k) => (&self.trait_bases, k as usize),
        }
    }

    fn get_base(&self, base: Base, key: (usize, Millis)) -> Option<Option<Millis>> {
        let (list, i) = self.bases(base);
        let &(stamp, at) = list.get(i)?;
        (key == self.key && stamp == self.pass).then_some(at)
    }

    fn set_base(&mut self, base: Base, key: (usize, Millis), at: Option<Millis>) {
        if key != self.key {
            return;
        }
        let (list, i) = match base {
            Base::Event(s) => (&mut self.event_bases, s as usize),
            Base::Trait(k) => (&mut self.trait_bases, k as usize),
        };
        if list.len() <= i {
            list.resize(i + 1, (0, None));
        }
        list[i] = (self.pass, at);
    }
}

impl<'a> UserEnv<'a> {
    /// `user` at `now`.
    pub fn new(cat: &'a Catalog, user: &'a UserData, now: Millis, granularity: Millis) -> Self {
        UserEnv {
            cat,
            user,
            now,
            granularity,
            views: None,
            traits: None,
            flips: None,
            shared: None,
        }
    }

    /// The same, reading the memberships of a slot that shares another's
    /// (see [`Memberships`]) from that one: `members` are the user's
    /// shard's. Without it, every slot reads its own list entries.
    pub fn with_shared(self, members: &'a Memberships) -> Self {
        UserEnv {
            shared: Some(members),
            ..self
        }
    }

    /// The user at another instant.
    pub fn at(&self, now: Millis) -> Self {
        UserEnv {
            views: None,
            traits: None,
            flips: None,
            now,
            ..*self
        }
    }

    /// The same, reading the memberships `flips` holds (the user's) from
    /// there: a pass applies its flips to the user's list only once it ends.
    pub fn with_flips(self, flips: Option<&'a PassFlips>) -> Self {
        UserEnv { flips, ..self }
    }

    /// The slot whose list entries hold `aud`'s memberships.
    #[inline]
    fn keeper(&self, aud: AudId) -> AudId {
        self.shared.map_or(aud, |m| m.keeper(aud))
    }

    /// Whether the user is in `aud` now (its flip in the pass, if any: a
    /// slot sharing another's flips with it, which comes first in rank).
    fn is_member(&self, aud: AudId) -> bool {
        let keeper = self.keeper(aud);
        match self.flips.and_then(|f| f.member(keeper)) {
            Some(member) => member,
            None => self.user.is_member(keeper),
        }
    }

    /// When the user entered `aud`, if in it now.
    fn entered(&self, aud: AudId) -> Option<Millis> {
        let keeper = self.keeper(aud);
        let entered = match self.flips.and_then(|f| f.entered(keeper)) {
            Some(entered) => entered,
            None => self.user.entered(keeper),
        };
        match self.shared {
            Some(members) => entered.map(|at| members.entered_from(aud, at)),
            None => entered,
        }
    }

    /// The same, reading traits from `traits` when given: the user's
    /// traits unpacked (sorted by key), which a shard does once per event
    /// rather than once per atom that reads one.
    pub fn with_traits(self, traits: Option<&'a [(TraitKey, Value)]>) -> Self {
        UserEnv { traits, ..self }
    }

    /// The same, keeping the views it computes in `memo` (whose pass the
    /// caller has begun for this user and instant, and whose values it has
    /// kept up to date with the states).
    pub fn with_views(self, memo: &'a RefCell<ViewMemo>) -> Self {
        UserEnv {
            views: Some(memo),
            ..self
        }
    }
}

impl UserEnv<'_> {
    /// The user's value of a trait (the unpacked copy when given).
    pub fn trait_value(&self, key: TraitKey) -> Option<Cow<'_, Value>> {
        let Some(traits) = self.traits else {
            return self.user.trait_value(key);
        };
        let i = traits.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(Cow::Borrowed(&traits[i].1))
    }

    fn latest(&self, state: StateId) -> Option<Millis> {
        self.user.state(state).and_then(|s| s.latest(self.now))
    }

    /// The instant a duration-valued leaf counts from.
    fn duration_base(&self, e: &CExpr) -> Option<Millis> {
        match e {
            CExpr::SinceEvent(s) => self.remembered_base(Base::Event(*s), || self.latest(*s)),
            CExpr::SinceTrait(k) => {
                self.remembered_base(Base::Trait(*k), || {
                    // The common shape, packed as its seconds: no text formatted and
                    // parsed again. (The unpacked traits, when there are any, are
                    // the same as the packed ones.)
                    if let Some(t) = self.user.traits.utc_instant(*k) {
                        return Some(floor_to(t, self.granularity));
                    }
                    match self.trait_value(*k)?.as_ref() {
                        Value::Str(s) => parse_timestamp(s)
                            .ok()
                            .map(|t| floor_to(t, self.granularity)),
                        _ => None,
                    }
                })
            }
            // Memberships move within a pass: never remembered.
            CExpr::MemberFor(a) => self.entered(*a),
            _ => None,
        }
    }

    /// A `since` base through the pass's memo, when there is one.
    fn remembered_base(&self, base: Base, find: impl FnOnce() -> Option<Millis>) -> Option<Millis> {
        let Some(memo) = self.views else {
            return find();
        };
        let key = (std::ptr::from_ref(self.user) as usize, self.now);
        if let Some(at) = memo.try_borrow().ok().and_then(|m| m.get_base(base, key)) {
            return at;
        }
        let at = find();
        if let Ok(mut m) = memo.try_borrow_mut() {
            m.set_base(base, key, at);
        }
        at
    }

    /// Value of a view for this user (kept for the pass, with a memo).
    pub fn view(&self, view: u32) -> Option<Value> {
        let Some(memo) = self.views else {
            return self.compute_view(view);
        };
        let key = (std::ptr::from_ref(self.user) as usize, self.now);
        // Nothing evaluated below reads views, so the memo is never borrowed
        // twice; were it, the value would just be computed afresh.
        if let Some(value) = memo
            .try_borrow()
            .ok()
            .and_then(|m| m.get(view, key).cloned())
        {
            return value;
        }
        let value = self.compute_view(view);
        if let Ok(mut m) = memo.try_borrow_mut() {
            m.set(view, key, value.clone());
        }
        value
    }

    fn compute_view(&self, view: u32) -> Option<Value> {
        let def = self.cat.views[view as usize];
        let anchor = match def.window {
            WindowDef::Since(a) => self.latest(a),
            _ => None,
        };
        let empty = crate::state::UserState::default();
        let state = self.user.state(def.state).unwrap_or(&empty);
        let Some((range, with_summary)) = window_bounds(state, def.window, self.now, anchor) else {
            return aggregate(def.func, Entries::EMPTY, None, false);
        };
        if def.func == AggFunc::Avg && range.len() >= AVG_THROUGH_SUM_FROM {
            let entries = state.entries(range.clone());
            if let Some(avg) = self.avg_through_sum(def, entries, state.summary(), with_summary) {
                return avg;
            }
        }
        state.fold(def.func, range, with_summary)
    }

    /// An average over a window of numbers as the window's `sum` (a view of
    /// its own, which the pass may know already: read by other rules, or
    /// carried over the event's entry) divided by their count: the same
    /// fold and the same division as [`aggregate`]'s, so the same value,
    /// without a second walk over the numbers. None when the catalog has no
    /// such sum, or counting the numbers would be a walk itself.
    fn avg_through_sum(
        &self,
        def: ViewDef,
        entries: Entries<'_>,
        summary: Option<&Summary>,
        with_summary: bool,
    ) -> Option<Option<Value>> {
        let sum_view = self.cat.sum_view_of(def)?;
        let kept = numeric_summary(summary, with_summary);
        let n = entries.number_count()? + kept.map_or(0, |s| s.num_count);
        if n == 0 {
            return Some(None);
        }
        match self.view(sum_view) {
            Some(Value::Num(sum)) => Some(Some(Value::Num(sum / n as f64))),
            _ => None,
        }
    }
}

impl Env for UserEnv<'_> {
    fn leaf(&self, e: &CExpr) -> Option<Cow<'_, Value>> {
        match e {
            CExpr::Trait(k) => self.trait_value(*k),
            CExpr::View(v) => self.view(*v).map(Cow::Owned),
            CExpr::SinceEvent(_) | CExpr::SinceTrait(_) | CExpr::MemberFor(_) => self
                .duration_base(e)
                .map(|b| Cow::Owned(Value::Dur(self.now - b))),
            CExpr::InAudience(a) => Some(Cow::Owned(Value::Bool(self.is_member(*a)))),
            CExpr::Computed(c) => self.user.computed_value(*c).map(Cow::Borrowed),
            _ => None,
        }
    }

    fn in_audience(&self, aud: AudId) -> bool {
        self.is_member(aud)
    }
}

/// Entries in a window from which an `avg` is its `sum` view divided by
/// the count (see `UserEnv::avg_through_sum`): below, the walk is shorter
/// than looking the sum's view up.
const AVG_THROUGH_SUM_FROM: usize = 8;

/// An event's properties (for `where` filters).
pub struct PropsEnv<'a>(pub &'a [(Arc<str>, Value)]);

impl Env for PropsEnv<'_> {
    fn leaf(&self, e: &CExpr) -> Option<Cow<'_, Value>> {
        match e {
            CExpr::Property(p) => self
                .0
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| Cow::Borrowed(v)),
            _ => None,
        }
    }
}

/// Evaluates a condition.
pub fn eval_bool<E: Env>(e: &CExpr, env: &E) -> bool {
    match e {
        CExpr::Not(x) => !eval_bool(x, env),
        CExpr::And(xs) => xs.iter().all(|x| eval_bool(x, env)),
        CExpr::Or(xs) => xs.iter().any(|x| eval_bool(x, env)),
        CExpr::Cmp(op, a, b) => match (eval_ref(a, env), eval_ref(b, env)) {
            (Some(a), Some(b)) => compare(&a, &b, *op),
            _ => false,
        },
        CExpr::In(x, list, negated) => eval_ref(x, env).is_some_and(|v| is_in(&v, list, *negated)),
        CExpr::Between(x, lo, hi, negated) => {
            match (eval_ref(x, env), eval_ref(lo, env), eval_ref(hi, env)) {
                (Some(x), Some(lo), Some(hi)) => is_between(&x, &lo, &hi, *negated),
                _ => false,
            }
        }
        CExpr::Str(op, a, b) => match (eval_ref(a, env), eval_ref(b, env)) {
            (Some(a), Some(b)) => match (&*a, &*b) {
                (Value::Str(a), Value::Str(b)) => match op {
                    StrOp::Contains => a.contains(&**b),
                    StrOp::StartsWith => a.starts_with(&**b),
                    StrOp::EndsWith => a.ends_with(&**b),
                },
                (Value::List(items), Value::Str(b)) if *op == StrOp::Contains => {
                    items.iter().any(|item| **item == **b)
                }
                _ => false,
            },
            _ => false,
        },
        CExpr::Exists(x) => eval_ref(x, env).is_some(),
        // The exclusions' atoms (`in_audience("a") and not in_audience("b")`):
        // read directly, not as a boolean value built by `eval_ref`.
        CExpr::InAudience(a) => env.in_audience(*a),
        other => matches!(eval_ref(other, env).as_deref(), Some(Value::Bool(true))),
    }
}

/// `x in list` (`negated`: `not in`) for a present `x`.
fn is_in(x: &Value, list: &[Value], negated: bool) -> bool {
    let found = match x {
        Value::List(items) => items
            .iter()
            .any(|s| list.iter().any(|l| l.as_str() == Some(s))),
        v => list.iter().any(|l| compare(v, l, CmpOp::Eq)),
    };
    found != negated
}

/// `x between lo and hi` (`negated`: `not between`) for present values;
/// false when they cannot be ordered together.
fn is_between(x: &Value, lo: &Value, hi: &Value, negated: bool) -> bool {
    if !(comparable(x, lo) && comparable(x, hi)) {
        return false;
    }
    let inside = compare(x, lo, CmpOp::Ge) && compare(x, hi, CmpOp::Le);
    inside != negated
}

impl LeafTest {
    /// The test on a leaf's value (`None`: null, which fails every test but
    /// `not` around it).
    #[inline]
    pub fn holds(&self, leaf: Option<&Value>) -> bool {
        let Some(x) = leaf else {
            return false;
        };
        self.holds_directly(x)
            .unwrap_or_else(|| self.holds_compared(x))
    }

    /// Durations and numbers against literals of their kind (the timers'
    /// `since` ladders, the views' thresholds), decided without
    /// [`compare`]'s dispatch on both kinds: [`LeafTest::holds_compared`]'s
    /// answers, or None for the other tests.
    #[inline]
    fn holds_directly(&self, x: &Value) -> Option<bool> {
        match (self, x) {
            (
                LeafTest::Between {
                    lo: Value::Dur(lo),
                    hi: Value::Dur(hi),
                    negated,
                },
                Value::Dur(d),
            ) => Some((lo <= d && d <= hi) != *negated),
            (
                LeafTest::Cmp {
                    op,
                    value: Value::Dur(c),
                    leaf_left,
                },
                Value::Dur(d),
            ) => Some(op.holds(if *leaf_left { d.cmp(c) } else { c.cmp(d) })),
            (
                LeafTest::Cmp {
                    op,
                    value: Value::Num(c),
                    leaf_left,
                },
                Value::Num(n),
            ) => Some(if *leaf_left {
                op.holds_for(*n, *c)
            } else {
                op.holds_for(*c, *n)
            }),
            _ => None,
        }
    }

    /// The test on a present value, through [`compare`]. (Kept out of
    /// line: inlined, its calls made every test save and restore the
    /// registers they use.)
    #[inline(never)]
    fn holds_compared(&self, x: &Value) -> bool {
        match self {
            LeafTest::Cmp {
                op,
                value,
                leaf_left: true,
            } => compare(x, value, *op),
            LeafTest::Cmp { op, value, .. } => compare(value, x, *op),
            LeafTest::Between { lo, hi, negated } => is_between(x, lo, hi, *negated),
            LeafTest::In { list, negated } => is_in(x, list, *negated),
            LeafTest::Exists => true,
        }
    }
}

/// An atom's truth: its leaf's value through its test when it has that
/// shape (one leaf read, no expression walked), else its expression.
pub fn eval_atom<E: Env>(atom: &AtomDef, env: &E) -> bool {
    match &atom.test {
        Some((leaf, test)) => test.holds(env.leaf(leaf).as_deref()),
        None => eval_bool(&atom.expr, env),
    }
}

/// Evaluates a value; `None` is null.
pub fn eval_value<E: Env>(e: &CExpr, env: &E) -> Option<Value> {
    eval_ref(e, env).map(Cow::into_owned)
}

/// [`eval_value`], borrowing literals and stored values instead of cloning.
fn eval_ref<'a, E: Env>(e: &'a CExpr, env: &'a E) -> Option<Cow<'a, Value>> {
    match e {
        CExpr::Lit(v) => Some(Cow::Borrowed(v)),
        CExpr::Neg(x) => eval_ref(x, env)?
            .as_num()
            .map(|n| Cow::Owned(Value::Num(-n))),
        CExpr::Arith(op, a, b) => {
            let a = eval_ref(a, env)?.as_num()?;
            let b = eval_ref(b, env)?.as_num()?;
            let r = match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div => {
                    if b == 0.0 {
                        return None;
                    }
                    a / b
                }
            };
            Some(Cow::Owned(Value::Num(r)))
        }
        op if op.is_boolean_operator() => Some(Cow::Owned(Value::Bool(eval_bool(e, env)))),
        leaf => env.leaf(leaf),
    }
}

fn comparable(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Num(_), Value::Num(_))
            | (Value::Str(_), Value::Str(_))
            | (Value::Dur(_), Value::Dur(_))
    )
}

/// Compares two values; values of different types (or NaN) compare false.
pub fn compare(a: &Value, b: &Value, op: CmpOp) -> bool {
    let ord = match (a, b) {
        (Value::Num(x), Value::Num(y)) => match x.partial_cmp(y) {
            Some(o) => o,
            None => return false,
        },
        // Equality (the common case: `trait.country == "US"`) needs no
        // ordering: short strings are compared inline, and most differ in
        // length.
        (Value::Str(x), Value::Str(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
            return (x == y) == matches!(op, CmpOp::Eq);
        }
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Dur(x), Value::Dur(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => x.cmp(y),
        _ => return false,
    };
    op.holds(ord)
}

fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl UserEnv<'_> {
    /// The earliest instant after `now` at which time alone (a window
    /// lapsing, a `since` crossing a bound, a future event becoming visible)
    /// can change the value of `e`; `None` if never.
    pub fn next_change(&self, e: &CExpr) -> Option<Millis> {
        self.raw_next_change(e)
            .filter(|&t| t > self.now)
            .map(|t| ceil_to(t, self.granularity))
    }

    /// [`UserEnv::next_change`] of an atom's expression, from the shape
    /// the catalog found in it when it has one of the common ones (a
    /// count compared with a number, a duration compared with literals):
    /// the same instant, without walking the expression's boxes, which a
    /// timer's group reads for each of its atoms.
    pub fn atom_next_change(&self, atom: &AtomDef) -> Option<Millis> {
        let raw = match (atom.threshold, &atom.test) {
            (Some((view, op, k)), _) => self.threshold_next_change_of(view, op, k),
            (None, Some((leaf, test))) if is_duration_source(leaf) => {
                self.duration_test_next_change(leaf, test)
            }
            _ => None,
        };
        let next = match raw {
            Some(raw) => raw
                .filter(|&t| t > self.now)
                .map(|t| ceil_to(t, self.granularity)),
            None => self.next_change(&atom.expr),
        };
        debug_assert_eq!(next, self.next_change(&atom.expr));
        next
    }

    /// The raw next change of a duration `leaf` tested against literal
    /// durations (`None`: another shape).
    fn duration_test_next_change(&self, leaf: &CExpr, test: &LeafTest) -> Option<Option<Millis>> {
        match *test {
            LeafTest::Cmp {
                op,
                value: Value::Dur(c),
                leaf_left,
            } => {
                let op = if leaf_left { op } else { op.flipped() };
                Some(self.duration_cmp_next_change(leaf, op, c))
            }
            LeafTest::Between {
                lo: Value::Dur(l),
                hi: Value::Dur(h),
                ..
            } => Some(self.duration_between_next_change(leaf, l, h)),
            _ => None,
        }
    }

    /// The next change of every atom of a timer's group at once (see
    /// [`TimerLadder`]): the earliest of its offsets from the source's base
    /// that falls after now, or the source's own next change (a future
    /// event becoming visible). The same instant as the earliest
    /// [`UserEnv::atom_next_change`] of the group's atoms.
    pub fn ladder_next_change(&self, ladder: &TimerLadder) -> Option<Millis> {
        let g = self.granularity;
        let crossing = self.duration_base(&ladder.leaf).and_then(|base| {
            // As in `crossing`: past the last instant, never.
            let at = |off: Millis| base.checked_add(off).map(|t| ceil_to(t, g));
            // Instants rise with the offsets (those past the last instant
            // come last): the first one after now.
            let first = ladder
                .offsets
                .partition_point(|&off| at(off).is_some_and(|t| t <= self.now));
            ladder.offsets.get(first).and_then(|&off| at(off))
        });
        earliest(crossing, self.next_change(&ladder.leaf))
    }

    /// The raw next change of `x op c`, `x` a duration that grows with time.
    fn duration_cmp_next_change(&self, x: &CExpr, op: CmpOp, c: Millis) -> Option<Millis> {
        let edge = Edge::of(op);
        let crossing = self
            .duration_base(x)
            .and_then(|b| self.crossing(b, c, edge));
        earliest(crossing, self.next_change(x))
    }

    /// The raw next change of `x between l and h`, `x` a duration that
    /// grows with time: inside from reaching `l` until passing `h`.
    fn duration_between_next_change(&self, x: &CExpr, l: Millis, h: Millis) -> Option<Millis> {
        let crossing = self.duration_base(x).and_then(|b| {
            earliest(
                self.crossing(b, l, Edge::Reaches),
                self.crossing(b, h, Edge::Passes),
            )
        });
        earliest(crossing, self.next_change(x))
    }

    fn raw_next_change(&self, e: &CExpr) -> Option<Millis> {
        match e {
            CExpr::Lit(_) | CExpr::Trait(_) | CExpr::Property(_) | CExpr::InAudience(_) => None,
            // A kept computed value changes through the computed trait's own
            // timer, which then re-evaluates the rules reading it.
            CExpr::Computed(_) => None,
            CExpr::MemberFor(_) | CExpr::SinceTrait(_) => None,
            CExpr::SinceEvent(s) => self.future(*s),
            CExpr::View(v) => self.view_next_change(*v),
            CExpr::Cmp(op, a, b) => {
                if let Some(t) = self.threshold_next_change(e) {
                    return t;
                }
                // `x op c` with `x` a duration that grows with time.
                let bound = |x: &CExpr, op: CmpOp, y: &CExpr| -> Option<Option<Millis>> {
                    let Some(Value::Dur(c)) = literal(y) else {
                        return None;
                    };
                    is_duration_source(x).then(|| self.duration_cmp_next_change(x, op, c))
                };
                if let Some(t) = bound(a, *op, b).or_else(|| bound(b, op.flipped(), a)) {
                    return t;
                }
                earliest(self.next_change(a), self.next_change(b))
            }
            CExpr::Between(x, lo, hi, _) => {
                if is_duration_source(x) {
                    if let (Some(Value::Dur(l)), Some(Value::Dur(h))) = (literal(lo), literal(hi)) {
                        return self.duration_between_next_change(x, l, h);
                    }
                }
                earliest(
                    earliest(self.next_change(x), self.next_change(lo)),
                    self.next_change(hi),
                )
            }
            CExpr::Exists(x) | CExpr::Not(x) | CExpr::Neg(x) | CExpr::In(x, _, _) => {
                self.next_change(x)
            }
            CExpr::And(xs) | CExpr::Or(xs) => xs
                .iter()
                .fold(None, |acc, x| earliest(acc, self.next_change(x))),
            CExpr::Arith(_, a, b) | CExpr::Str(_, a, b) => {
                earliest(self.next_change(a), self.next_change(b))
            }
        }
    }

    /// For a value `now - base` compared with `c`: the first instant after
    /// now at which it reaches `c` or passes it, as `edge` asks.
    fn crossing(&self, base: Millis, c: Millis, edge: Edge) -> Option<Millis> {
        // Past the last instant (a literal of some 10^11 days): never.
        edge.offsets(c)
            .into_iter()
            .flatten()
            .filter_map(|off| base.checked_add(off))
            .map(|t| ceil_to(t, self.granularity))
            .find(|&t| t > self.now)
    }

    fn future(&self, state: StateId) -> Option<Millis> {
        self.user
            .state(state)
            .and_then(|s| s.next_visible(self.now))
    }

    fn view_next_change(&self, view: u32) -> Option<Millis> {
        let def = self.cat.views[view as usize];
        let mut next = self.future(def.state);
        match def.window {
            WindowDef::All => {}
            WindowDef::Last(w) => {
                if let Some(state) = self.user.state(def.state) {
                    if let Some((entries, _)) = window_range(state, def.window, self.now, None) {
                        next = earliest(next, entries.times.first().map(|t| t + w));
                    }
                }
            }
            WindowDef::Since(anchor) => next = earliest(next, self.future(anchor)),
        }
        next
    }

    /// Exact next flip of `count(E, W) op k`: the instant the count falls to
    /// a value where the comparison changes. `None` if `e` is not such a
    /// comparison; `Some(None)` if it never flips by time.
    fn threshold_next_change(&self, e: &CExpr) -> Option<Option<Millis>> {
        let (view, op, k) = self.cat.threshold_atom(e)?;
        self.threshold_next_change_of(view, op, k)
    }

    /// [`UserEnv::threshold_next_change`] of `count op k` over `view`.
    fn threshold_next_change_of(&self, view: u32, op: CmpOp, k: f64) -> Option<Option<Millis>> {
        let def = self.cat.views[view as usize];
        let WindowDef::Last(w) = def.window else {
            return None;
        };
        let future = self.future(def.state);
        let Some(state) = self.user.state(def.state) else {
            return Some(future);
        };
        let (entries, _) = window_range(state, def.window, self.now, None)?;
        // The count falls by one as each entry lapses, oldest first: the
        // flip is where the `j`-th lapse makes the comparison change.
        let flip =
            first_flip_as_count_falls(entries.len(), k, op).map(|j| entries.times[j - 1] + w);
        Some(earliest(flip, future))
    }
}

/// For a count `c` compared with `k`: the smallest `j` in `1..=c` at which
/// `c - j` compares otherwise than `c` does, if any. A comparison of a
/// whole count with `k` can only change between counts within one of
/// `k`, so only those are tried (a heavy user's window holds thousands).
fn first_flip_as_count_falls(c: usize, k: f64, op: CmpOp) -> Option<usize> {
    let truth = |n: usize| op.holds_for(n as f64, k);
    let now = truth(c);
    if c == 0 || !k.is_finite() {
        // A comparison with an infinite or NaN constant is the same for
        // every count.
        return None;
    }
    // Counts above `ceil(k) + 1` compare as `c` does; so do those below
    // `floor(k) - 1` as `floor(k) - 1` does.
    let top = (k.ceil() + 1.0).min((c - 1) as f64);
    let bottom = (k.floor() - 1.0).max(0.0);
    if top < bottom {
        return None;
    }
    (bottom as usize..=top as usize)
        .rev()
        .find(|&n| truth(n) != now)
        .map(|n| c - n)
}

/// Where a comparison of a growing duration `d` with a constant `c` can
/// change: as `d` reaches `c` (`>=`, `<`), as it passes it (`>`, `<=`), or
/// both (`==`, `!=`). Timers go only to those instants: a timer at the
/// other one would fire and find nothing changed.
#[derive(Debug, Clone, Copy)]
enum Edge {
    Reaches,
    Passes,
    Both,
}

impl Edge {
    /// Where `x op c` changes, `x` growing with time.
    fn of(op: CmpOp) -> Edge {
        match op {
            CmpOp::Ge | CmpOp::Lt => Edge::Reaches,
            CmpOp::Gt | CmpOp::Le => Edge::Passes,
            CmpOp::Eq | CmpOp::Ne => Edge::Both,
        }
    }

    /// The offsets from a duration's base where `x op c` changes, in
    /// order: `c` if it does as `x` reaches `c`, `c + 1` if once `x` has
    /// passed it (none past the last instant).
    fn offsets(self, c: Millis) -> [Option<Millis>; 2] {
        let reaches = matches!(self, Edge::Reaches | Edge::Both).then_some(c);
        let passes = matches!(self, Edge::Passes | Edge::Both)
            .then(|| c.checked_add(1))
            .flatten();
        [reaches, passes]
    }
}

/// The offsets from a duration's base where a test of the duration
/// against literal durations changes (see [`TimerLadder`]); None for the
/// tests a ladder cannot hold.
pub(crate) fn ladder_offsets(test: &LeafTest) -> Option<[Option<Millis>; 2]> {
    match *test {
        LeafTest::Cmp {
            op,
            value: Value::Dur(c),
            leaf_left,
        } => Some(Edge::of(if leaf_left { op } else { op.flipped() }).offsets(c)),
        LeafTest::Between {
            lo: Value::Dur(l),
            hi: Value::Dur(h),
            ..
        } => Some([Edge::Reaches.offsets(l)[0], Edge::Passes.offsets(h)[1]]),
        _ => None,
    }
}

/// The [`TimerLadder`] of a timer's `group`, when each of its atoms tests
/// the same duration leaf against literal durations (the shapes
/// [`UserEnv::atom_next_change`] reads without walking the expression).
pub fn timer_ladder(cat: &Catalog, group: &[AtomId]) -> Option<TimerLadder> {
    let mut leaf: Option<&CExpr> = None;
    let mut edges = Vec::new();
    for (i, &a) in group.iter().enumerate() {
        let atom = &cat.atoms[a as usize];
        let (x, test) = atom.test.as_ref().filter(|_| atom.threshold.is_none())?;
        if !is_duration_source(x) || leaf.is_some_and(|l| l != x) {
            return None;
        }
        leaf = Some(x);
        let [first, second] = ladder_offsets(test)?;
        edges.extend(first.into_iter().chain(second).map(|o| (o, i as u32)));
    }
    edges.sort_unstable();
    let mut offsets: Vec<Millis> = edges.iter().map(|&(o, _)| o).collect();
    offsets.dedup();
    Some(TimerLadder {
        leaf: leaf?.clone(),
        offsets,
        edges,
    })
}

fn literal(e: &CExpr) -> Option<Value> {
    match e {
        CExpr::Lit(v) => Some(v.clone()),
        _ => None,
    }
}

fn is_duration_source(e: &CExpr) -> bool {
    matches!(
        e,
        CExpr::SinceEvent(_) | CExpr::SinceTrait(_) | CExpr::MemberFor(_)
    )
}

/// Evaluates a rule formula, each atom through `atom`.
pub fn eval_rule(rule: &RuleExpr, atom: &mut impl FnMut(AtomId) -> bool) -> bool {
    match rule {
        RuleExpr::Const(b) => *b,
        RuleExpr::Atom(a) => atom(*a),
        RuleExpr::Not(x) => !eval_rule(x, atom),
        RuleExpr::And(xs) => xs.iter().all(|x| eval_rule(x, atom)),
        RuleExpr::Or(xs) => xs.iter().any(|x| eval_rule(x, atom)),
    }
}

/// How an evaluation reads atoms: the truths it already knows, and any
/// atom's, evaluated if need be.
pub trait AtomTruths {
    /// The atom's truth if already known, without evaluating it.
    fn known(&self, atom: AtomId) -> Option<bool>;
    /// The atom's truth.
    fn truth(&mut self, atom: AtomId) -> bool;
}

/// An audience's rule through `atoms`, an operand whose truth is known
/// deciding an `and` (false) or an `or` (true) before any other operand is
/// evaluated: when an event flips one atom of `a and b and c` to false, the
/// others are not looked at. A conjunction of literals is a loop (see
/// [`Formula::Literals`]); no formula is false.
pub fn eval_known_first(formula: &Formula, atoms: &mut impl AtomTruths) -> bool {
    match formula {
        Formula::Literals(literals) => {
            !literals
                .iter()
                .any(|&(atom, needs)| atoms.known(atom) == Some(!needs))
                && literals
                    .iter()
                    .all(|&(atom, needs)| atoms.truth(atom) == needs)
        }
        Formula::Rule(rule) => eval_rule_known_first(rule, atoms),
        Formula::None => false,
    }
}

/// [`eval_rule`] the way [`eval_known_first`] reads atoms.
fn eval_rule_known_first(rule: &RuleExpr, atoms: &mut impl AtomTruths) -> bool {
    fn known(x: &RuleExpr, atoms: &impl AtomTruths) -> Option<bool> {
        if let RuleExpr::Const(b) = x {
            return Some(*b);
        }
        let (atom, needs) = x.literal()?;
        atoms.known(atom).map(|truth| truth == needs)
    }
    match rule {
        RuleExpr::Const(b) => *b,
        RuleExpr::Atom(a) => atoms.truth(*a),
        RuleExpr::Not(x) => !eval_rule_known_first(x, atoms),
        RuleExpr::And(xs) => {
            !xs.iter().any(|x| known(x, atoms) == Some(false))
                && xs.iter().all(|x| eval_rule_known_first(x, atoms))
        }
        RuleExpr::Or(xs) => {
            xs.iter().any(|x| known(x, atoms) == Some(true))
                || xs.iter().any(|x| eval_rule_known_first(x, atoms))
        }
    }
}

/// Evaluates audience `aud`'s rule for the user.
pub fn member(cat: &Catalog, aud: AudId, env: &UserEnv<'_>) -> bool {
    match &cat.audiences[aud as usize] {
        Some(def) => eval_rule(&def.rule, &mut |a| {
            eval_bool(&cat.atoms[a as usize].expr, env)
        }),
        None => false,
    }
}

/// A profile with no traits, no events and no memberships: only the
/// computed traits' values on no events.
fn empty_profile(cat: &Catalog) -> UserData {
    let mut user = UserData::default();
    user.traits.set_computed_list(cat.empty_computed.clone());
    user
}

/// The rules a profile with no traits, no events and no memberships
/// satisfies (such as `not did("X")`), in rank order. On an empty profile
/// every value is constant in time, so this is a property of the rule.
/// Reads [`Catalog::empty_atom_truth`] for the atoms it knows (evaluating
/// each atom's expression again as each rule was walked was a tenth of a
/// definition at 10,000 audiences).
pub fn rules_true_on_empty_profile(cat: &Catalog) -> Vec<AudId> {
    let mut user = empty_profile(cat);
    let mut order: Vec<AudId> = cat.keys().map(|(slot, _)| slot).collect();
    order.sort_by_key(|&a| cat.rank[a as usize]);
    let mut out = Vec::new();
    for aud in order {
        if rule_holds_on(cat, &user, aud) {
            user.set_member(aud, true, 0);
            out.push(aud);
        }
    }
    out
}

/// Whether audience `aud`'s rule holds on `user`, a profile without
/// traits or events, member of the audiences of lower rank it holds on.
fn rule_holds_on(cat: &Catalog, user: &UserData, aud: AudId) -> bool {
    let Some(def) = &cat.audiences[aud as usize] else {
        return false;
    };
    let env = UserEnv::new(cat, user, 0, 1);
    eval_rule(
        &def.rule,
        &mut |a| match cat.empty_atom_truth.get(a as usize) {
            Some(&Some(truth)) => truth,
            _ => eval_bool(&cat.atoms[a as usize].expr, &env),
        },
    )
}

/// Whether the rule of `aud`, which ranks after every other audience, is
/// one of [`rules_true_on_empty_profile`] (given theirs in
/// [`Catalog::empty_true`]).
pub fn rule_true_on_empty_profile(cat: &Catalog, aud: AudId) -> bool {
    let mut user = empty_profile(cat);
    for &member in &cat.empty_true {
        user.set_member(member, true, 0);
    }
    rule_holds_on(cat, &user, aud)
}

/// The values of the live computed traits on a profile with no events, by
/// slot, leaving out nulls (`count(...)` is 0, `sum(...)` is null). They are
/// constant in time.
pub fn computed_on_empty_profile(cat: &Catalog) -> Vec<(CtId, Value)> {
    let user = UserData::default();
    let env = UserEnv::new(cat, &user, 0, 1);
    cat.computed_traits()
        .filter_map(|(ct, def)| eval_value(&def.expr, &env).map(|v| (ct, v)))
        .collect()
}

/// Each atom's truth on a profile with no traits and no events (only the
/// computed traits' empty values); `None` for atoms reading memberships and
/// for those no live rule reads. Like [`rules_true_on_empty_profile`],
/// constant in time.
pub fn atoms_on_empty_profile(cat: &Catalog) -> Vec<Option<bool>> {
    atoms_on_empty_profile_among(cat, 0..cat.atoms.len())
}

/// [`atoms_on_empty_profile`] of the atoms of ids in `atoms`.
pub fn atoms_on_empty_profile_among(
    cat: &Catalog,
    atoms: std::ops::Range<usize>,
) -> Vec<Option<bool>> {
    let user = empty_profile(cat);
    let env = UserEnv::new(cat, &user, 0, 1);
    // Only live rules' atoms are read (the catalog keeps every atom ever
    // compiled, and would evaluate each at every definition).
    (cat.atoms[atoms.clone()].iter())
        .zip(&cat.atom_rules[atoms])
        .map(|(atom, rules)| {
            let known = !rules.is_empty() && !atom.reads_memberships();
            known.then(|| eval_bool(&atom.expr, &env))
        })
        .collect()
}

/// Per audience slot: whether its rule is false on every profile without
/// events, whatever its traits and memberships (such as `trait.plan == "pro"
/// and did("Order Completed", 30d)`). An identify on such a profile then
/// need not evaluate it. Decided in three-valued logic: atoms reading
/// traits or memberships are unknown, the others take their truth on an
/// empty profile.
pub fn rules_false_without_events(cat: &Catalog) -> Vec<bool> {
    let rule = |def: &Option<Arc<AudienceDef>>| {
        def.as_ref()
            .is_some_and(|d| rule_false_without_events(cat, d))
    };
    cat.audiences.iter().map(rule).collect()
}

/// [`rules_false_without_events`] of one definition.
pub fn rule_false_without_events(cat: &Catalog, def: &AudienceDef) -> bool {
    let atom = |a: AtomId| {
        let def = &cat.atoms[a as usize];
        if def.traits.is_empty() && !def.reads_memberships() {
            cat.empty_atom_truth.get(a as usize).copied().flatten()
        } else {
            None
        }
    };
    let decide = |d: &AudienceDef| !d.is_static && eval3(&d.rule, &atom) == Some(false);
    if !def.computed.is_empty() {
        return decide(def);
    }
    let known = *def.facts.false_without_events.get_or_init(|| decide(def));
    debug_assert_eq!(known, decide(def), "{}", def.key);
    known
}

/// The states an audience's rule cannot do without: each is one such that
/// the rule is false on every profile holding no entry of it, whatever the
/// profile's traits, memberships and other states (`trait.country == "US"
/// and count("Order Completed", 30d) >= 2` cannot do without the orders).
/// Decided per state read in three-valued logic: the atoms reading that
/// state alone (and no trait, membership or computed trait) take their
/// truth on an empty profile, every other atom is unknown. A backfill need
/// not evaluate the rule on a profile lacking one of them. Empty for a
/// static audience or a free slot.
pub fn gate_states(cat: &Catalog, aud: AudId) -> SmallVec<[StateId; 2]> {
    let Some(def) = cat.audiences.get(aud as usize).and_then(Option::as_ref) else {
        return SmallVec::new();
    };
    if def.is_static {
        return SmallVec::new();
    }
    let mut read: SmallVec<[StateId; 4]> = def
        .atoms
        .iter()
        .flat_map(|&a| cat.atoms[a as usize].states.iter().copied())
        .collect();
    read.sort_unstable();
    read.dedup();
    read.into_iter()
        .filter(|&state| {
            let atom = |a: AtomId| {
                let atom = &cat.atoms[a as usize];
                let alone = atom.reads_only_states() && atom.states.iter().all(|&s| s == state);
                alone
                    .then(|| cat.empty_atom_truth.get(a as usize).copied().flatten())
                    .flatten()
            };
            eval3(&def.rule, &atom) == Some(false)
        })
        .collect()
}

/// A rule in three-valued logic: `None` where an atom it needs is unknown.
fn eval3(rule: &RuleExpr, atom: &impl Fn(AtomId) -> Option<bool>) -> Option<bool> {
    match rule {
        RuleExpr::Const(b) => Some(*b),
        RuleExpr::Atom(a) => atom(*a),
        RuleExpr::Not(x) => eval3(x, atom).map(|b| !b),
        RuleExpr::And(xs) => junction3(xs, false, atom),
        RuleExpr::Or(xs) => junction3(xs, true, atom),
    }
}

/// `and` (absorbing `false`) or `or` (absorbing `true`) in [`eval3`]: the
/// absorbing value wins even over unknowns; otherwise an unknown makes it
/// unknown.
fn junction3(
    xs: &[RuleExpr],
    absorbing: bool,
    atom: &impl Fn(AtomId) -> Option<bool>,
) -> Option<bool> {
    xs.iter()
        .try_fold(Some(!absorbing), |acc, x| match eval3(x, atom) {
            Some(b) if b == absorbing => Err(()),
            v => Ok(if v.is_none() { None } else { acc }),
        })
        .unwrap_or(Some(absorbing))
}

/// The value of computed trait `ct` for the user at the env's instant
/// (evaluated from the aggregation states, not the kept value).
pub fn computed_value(cat: &Catalog, ct: CtId, env: &UserEnv<'_>) -> Option<Value> {
    let def = cat.computed.get(ct as usize)?.as_ref()?;
    eval_value(&def.expr, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![Just(f64::NAN), Just(-0.0), -3.0..3.0f64].prop_map(Value::Num),
            "[ab]{0,2}".prop_map(|s| Value::Str(s.into())),
            proptest::collection::vec("[ab]{0,2}", 0..3).prop_map(|items| {
                Value::List(items.into_iter().map(Arc::from).collect::<Vec<_>>().into())
            }),
            (-2i64..3).prop_map(Value::Dur),
        ]
    }

    fn cmp_op() -> impl Strategy<Value = CmpOp> {
        prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Lt),
            Just(CmpOp::Le),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
        ]
    }

    /// Durations and numbers only: the kinds [`LeafTest::holds`] decides
    /// without [`compare`].
    fn dur_or_num() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop_oneof![Just(f64::NAN), Just(-0.0), -3.0..3.0f64].prop_map(Value::Num),
            (-2i64..3).prop_map(Value::Dur),
        ]
    }

    /// An atom of one of the shapes [`LeafTest::of`] takes, over trait 0.
    fn leaf_atom() -> impl Strategy<Value = CExpr> {
        leaf_atom_of(value)
    }

    /// [`leaf_atom`] with literals of `value`.
    fn leaf_atom_of<S: Strategy<Value = Value> + 'static>(
        value: fn() -> S,
    ) -> impl Strategy<Value = CExpr> {
        let lit = move || value().prop_map(|v| Box::new(CExpr::Lit(v)));
        let leaf = || Box::new(CExpr::Trait(0));
        prop_oneof![
            (cmp_op(), lit()).prop_map(move |(op, v)| CExpr::Cmp(op, leaf(), v)),
            (cmp_op(), lit()).prop_map(move |(op, v)| CExpr::Cmp(op, v, leaf())),
            (lit(), lit(), any::<bool>()).prop_map(move |(lo, hi, neg)| CExpr::Between(
                leaf(),
                lo,
                hi,
                neg
            )),
            (proptest::collection::vec(value(), 0..3), any::<bool>())
                .prop_map(move |(list, neg)| CExpr::In(leaf(), list, neg)),
            Just(CExpr::Exists(leaf())),
        ]
    }

    /// `in_audience` decides as its leaf's boolean value: read directly by
    /// a user's environment, and through that value by the default an
    /// environment knowing only leaves takes; both through the pass's
    /// flips and the slots sharing another's memberships.
    #[test]
    fn in_audience_decides_as_its_leaf() {
        struct LeavesOnly<'a>(&'a UserEnv<'a>);
        impl Env for LeavesOnly<'_> {
            fn leaf(&self, e: &CExpr) -> Option<Cow<'_, Value>> {
                self.0.leaf(e)
            }
        }
        let cat = Catalog::default();
        let mut user = UserData::default();
        user.set_member(1, true, 0);
        user.set_member(3, true, 0);
        // Slot 4 shares slot 1's memberships, slot 6 slot 5's.
        let mut members = Memberships::default();
        members.share(4, 1, 0);
        members.share(6, 5, 0);
        // In this pass the user left 3 and entered 5.
        let mut flips = PassFlips::default();
        flips.push(0, 3, false, 0);
        flips.push(0, 5, true, 0);
        let env = UserEnv::new(&cat, &user, 0, 1)
            .with_shared(&members)
            .with_flips(flips.of(0));
        for aud in 0..8 {
            let expr = CExpr::InAudience(aud);
            let leaf = matches!(env.leaf(&expr).as_deref(), Some(Value::Bool(true)));
            assert_eq!(leaf, [1, 4, 5, 6].contains(&aud), "{aud}");
            assert_eq!(eval_bool(&expr, &env), leaf, "{aud}");
            assert_eq!(eval_bool(&expr, &LeavesOnly(&env)), leaf, "{aud}");
            let negated = CExpr::Not(Box::new(expr));
            assert_eq!(eval_bool(&negated, &env), !leaf, "{aud}");
        }
    }

    proptest! {
        /// The first flip of a falling count is the one a scan of every
        /// count finds.
        #[test]
        fn count_flips_where_a_scan_finds(
            c in 0usize..40,
            k in prop_oneof![(-3i32..45).prop_map(f64::from), -3.0..45.0f64, Just(f64::NAN), Just(f64::INFINITY)],
            op in cmp_op(),
        ) {
            let truth = |n: usize| compare(&Value::Num(n as f64), &Value::Num(k), op);
            let scanned = (1..=c).find(|&j| truth(c - j) != truth(c));
            prop_assert_eq!(first_flip_as_count_falls(c, k, op), scanned);
        }

        /// An atom's leaf test decides as its expression does, for every
        /// value the leaf can take (missing included).
        #[test]
        fn leaf_tests_decide_as_the_expression(expr in leaf_atom(), v in proptest::option::of(value())) {
            let cat = Catalog::default();
            let mut user = UserData::default();
            if let Some(v) = v {
                user.traits = [(0, v)].into_iter().collect();
            }
            let env = UserEnv::new(&cat, &user, 0, 1);
            let (leaf, test) = LeafTest::of(&expr).expect("a leaf atom");
            prop_assert_eq!(test.holds(env.leaf(&leaf).as_deref()), eval_bool(&expr, &env));
        }
    }

    proptest! {
        // Each shape meets each kind and boundary often enough.
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(4096)))]

        /// Durations and numbers tested against literals of their kind are
        /// decided directly as [`compare`] decides them.
        #[test]
        fn direct_tests_decide_as_compare(
            expr in leaf_atom_of(dur_or_num),
            x in dur_or_num(),
        ) {
            let (_, test) = LeafTest::of(&expr).expect("a leaf atom");
            if let Some(direct) = test.holds_directly(&x) {
                prop_assert_eq!(direct, test.holds_compared(&x));
            }
        }
    }

    /// A formula over atoms 0..6.
    fn formula() -> impl Strategy<Value = RuleExpr> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(RuleExpr::Const),
            (0u32..6).prop_map(RuleExpr::Atom),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|x| RuleExpr::Not(Box::new(x))),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(RuleExpr::And),
                proptest::collection::vec(inner, 0..4).prop_map(RuleExpr::Or),
            ]
        })
    }

    /// Atom truths, some known before the evaluation; counts evaluations.
    struct Truths {
        truths: [bool; 6],
        known: [bool; 6],
        evaluated: usize,
    }

    impl AtomTruths for Truths {
        fn known(&self, atom: AtomId) -> Option<bool> {
            self.known[atom as usize].then_some(self.truths[atom as usize])
        }

        fn truth(&mut self, atom: AtomId) -> bool {
            if !self.known[atom as usize] {
                self.evaluated += 1;
            }
            self.truths[atom as usize]
        }
    }

    /// `rule` as a loop of literals where it is a conjunction of them,
    /// and as a tree.
    fn formulas(rule: &RuleExpr) -> [Formula; 2] {
        [
            Formula::of_rule(rule),
            Formula::Rule(std::sync::Arc::new(rule.clone())),
        ]
    }

    proptest! {
        /// Known truths first, as a loop of literals or as a tree, a rule
        /// evaluates as a plain walk does, evaluating no atom that walk
        /// would not.
        #[test]
        fn known_first_evaluates_as_the_formula(
            rule in formula(),
            truths in any::<[bool; 6]>(),
            known in any::<[bool; 6]>(),
        ) {
            let expected = eval_rule(&rule, &mut |a| truths[a as usize]);
            let mut plain = 0;
            eval_rule(&rule, &mut |a| {
                plain += usize::from(!known[a as usize]);
                truths[a as usize]
            });
            for formula in formulas(&rule) {
                let mut atoms = Truths { truths, known, evaluated: 0 };
                prop_assert_eq!(eval_known_first(&formula, &mut atoms), expected);
                // What is known only saves evaluations.
                prop_assert!(atoms.evaluated <= plain);
            }
        }
    }

    fn false_without_events(rules: &[(&str, &str)]) -> Vec<bool> {
        let mut cat = Catalog::default();
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        rules
            .iter()
            .map(|(key, _)| cat.false_without_events[cat.audience(key).unwrap() as usize])
            .collect()
    }

    /// A view's value is kept for the pass of one user at one instant and
    /// read by nothing else: another instant, another user, a new pass.
    #[test]
    fn view_memo_keeps_values_for_its_user_and_instant_only() {
        let mut cat = Catalog::default();
        let src = r#"sum("O", revenue, 30d) > 10"#;
        cat.define_rule("a", src);
        let view = 0u32;
        let state = cat.views[view as usize].state;
        let mut user = UserData::default();
        user.state_mut(state).insert(100, Some(Value::Num(4.0)));
        let mut other = UserData::default();
        other.state_mut(state).insert(100, Some(Value::Num(7.0)));
        let memo = RefCell::new(ViewMemo::default());
        memo.borrow_mut().begin(cat.views.len(), &user, 200);
        let at = |u: &UserData, now| UserEnv::new(&cat, u, now, 1).with_views(&memo).view(view);
        assert_eq!(at(&user, 200), Some(Value::Num(4.0)));
        user.state_mut(state).insert(150, Some(Value::Num(5.0)));
        // Within the pass the kept value is read: the caller begins a new
        // pass when the states change.
        assert_eq!(at(&user, 200), Some(Value::Num(4.0)));
        assert_eq!(at(&user, 201), Some(Value::Num(9.0)));
        assert_eq!(at(&other, 200), Some(Value::Num(7.0)));
        memo.borrow_mut().begin(cat.views.len(), &user, 200);
        assert_eq!(at(&user, 200), Some(Value::Num(9.0)));
        // An environment at another instant stored nothing either.
        assert_eq!(at(&user, 201), Some(Value::Num(9.0)));
    }

    proptest! {
        /// An `avg` read through its window's `sum` view (with a memo or
        /// without, the sum known first or not) is, to the bit, the one
        /// folded afresh: numbers with fractions (whose sums round), over
        /// windows of every length, some entries summarised, and a string
        /// among them (then it is folded afresh).
        #[test]
        fn avg_through_sum_is_the_fresh_average(
            entries in proptest::collection::vec((0i64..100, -500i64..500), 0..40),
            string_at in proptest::option::of(0i64..100),
            horizon in 0i64..40,
            sum_first in any::<bool>(),
        ) {
            let mut cat = Catalog::default();
            for (key, src) in [
                ("a", r#"avg("O", revenue, 60d) > 1 or avg("O", revenue) > 1"#),
                ("s", r#"sum("O", revenue, 60d) > 1 or sum("O", revenue) > 1"#),
            ] {
                cat.define_rule(key, src);
            }
            let day = 86_400_000;
            let now = 100 * day;
            let mut user = UserData::default();
            let state = cat.views[0].state;
            let st = user.state_mut(state);
            for &(t, x) in &entries {
                st.insert(t * day, Some(Value::Num(x as f64 / 10.0)));
            }
            if let Some(t) = string_at {
                st.insert(t * day, Some(Value::Str("x".into())));
            }
            st.evict(horizon * day, &cat.states[state as usize]);
            let bits = |v: Option<Value>| v.map(|v| v.as_num().map(f64::to_bits));
            for (i, def) in cat.views.iter().enumerate() {
                if def.func != AggFunc::Avg {
                    continue;
                }
                let state = user.state(def.state).unwrap();
                let (window, with) = window_range(state, def.window, now, None).unwrap();
                let fresh = aggregate(AggFunc::Avg, window, state.summary(), with);
                let memo = RefCell::new(ViewMemo::default());
                memo.borrow_mut().begin(cat.views.len(), &user, now);
                let env = || UserEnv::new(&cat, &user, now, 1);
                if sum_first {
                    env().with_views(&memo).view(cat.sum_view_of(*def).unwrap());
                }
                prop_assert_eq!(bits(env().with_views(&memo).view(i as u32)), bits(fresh.clone()));
                prop_assert_eq!(bits(env().view(i as u32)), bits(fresh));
            }
        }
    }

    #[test]
    fn rules_needing_events_are_known() {
        let got = false_without_events(&[
            (
                "a",
                r#"trait.plan == "pro" and did("Order Completed", 30d)"#,
            ),
            ("b", r#"trait.plan == "pro""#),
            ("c", r#"not did("Order Completed", 30d)"#),
            ("d", r#"did("Order Completed", 30d) or trait.ltv > 300"#),
            ("e", r#"count("Order Completed") == 0 and trait.ltv > 1"#),
            ("f", r#"in_audience("b") and count("X", 7d) >= 2"#),
            ("g", r#"in_audience("b") or count("X", 7d) >= 2"#),
            ("h", r#"since("Checkout Started") between 2h and 24h"#),
            ("i", r#"not (trait.plan == "pro" or not did("X"))"#),
        ]);
        assert_eq!(
            got,
            [true, false, false, false, false, true, false, true, true]
        );
    }

    /// A rule's gate states, by event name (each state here is an event's
    /// with no filter): each one alone, lacking, makes the rule false.
    #[test]
    fn rules_name_the_states_they_cannot_do_without() {
        let rules = [
            ("a", r#"trait.country == "US" and count("O", 30d) >= 2"#),
            ("b", r#"did("O", 30d) or did("P", 7d)"#),
            ("c", r#"did("O", 30d) and did("P", 7d) and trait.x == 1"#),
            ("d", r#"not did("O", 30d)"#),
            ("e", r#"count("O", since "C") == 0 and since("C") > 2h"#),
            ("f", r#"in_audience("a") and sum("P", price, 7d) > 10"#),
            (
                "g",
                r#"did("O", 30d) and (did("P", 7d) or trait.vip == true)"#,
            ),
            ("h", r#"trait.country == "US""#),
            (
                "i",
                r#"avg("O", revenue, 30d) > 3 or avg("O", revenue, 30d) < 1"#,
            ),
            ("j", r#"count("O", 30d) < 2 and did("P", 7d)"#),
            // An atom reading two states is known on neither alone: with
            // orders and no "C", every order counts.
            ("k", r#"count("O", since "C") >= 1"#),
            // A computed trait is unknown, though it reads states only.
            ("l", r#"computed.n >= 1 or did("Q", 7d)"#),
            ("m", r#"computed.n >= 1 and did("Q", 7d)"#),
        ];
        let mut cat = Catalog::default();
        let n = r#"count("P", 7d)"#;
        let (ast, ty) = crate::rules::compile_value(n).unwrap();
        cat.define_computed("n", n, ast, ty).unwrap();
        for (key, src) in rules {
            cat.define_rule(key, src);
        }
        let gates = |key: &str| -> Vec<String> {
            let mut names: Vec<String> = gate_states(&cat, cat.audience(key).unwrap())
                .iter()
                .map(|&s| cat.states[s as usize].event.to_string())
                .collect();
            names.sort();
            names
        };
        let want: [(&str, &[&str]); 13] = [
            ("a", &["O"]),
            ("b", &[]),
            ("c", &["O", "P"]),
            ("d", &[]),
            // `since("C") > 2h` is false on a profile without a "C".
            ("e", &["C"]),
            ("f", &["P"]),
            ("g", &["O"]),
            ("h", &[]),
            ("i", &["O"]),
            ("j", &["P"]),
            ("k", &[]),
            ("l", &[]),
            ("m", &["Q"]),
        ];
        for (key, names) in want {
            assert_eq!(gates(key), names, "audience {key}");
        }
        assert!(gate_states(&cat, 99).is_empty());
    }
}
