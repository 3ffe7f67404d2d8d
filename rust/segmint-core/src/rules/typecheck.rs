//! Type checking of rules and computed-trait value expressions.
//!
//! The rules are in docs/rules.md ("Types"). Every error is a
//! [`SegmintError::RuleType`] pointing at the offending sub-expression.

use super::ast::{
    AggFunc, BinaryOp, Expr, ExprKind, Literal, Selector, SinceTarget, Span, UnaryOp, Window,
};
use super::Type;
use crate::error::{Result, RuleError, SegmintError};

#[derive(Clone, Copy)]
struct Ctx {
    /// Inside a `where` filter: only properties and literals.
    in_where: bool,
    /// `unique()` is allowed (computed-trait values).
    allow_unique: bool,
}

/// Resolves `computed.KEY` to the computed trait's type, or says why not.
pub(crate) type ComputedTypes<'a> = &'a dyn Fn(&str) -> std::result::Result<Type, String>;

struct Checker<'s> {
    src: &'s str,
    /// When set, `computed.KEY` must resolve (and takes its type).
    computed: Option<ComputedTypes<'s>>,
}

/// Checks an audience rule: it must be a condition.
pub(crate) fn check_rule(src: &str, expr: &Expr) -> Result<()> {
    check_rule_in(src, expr, None)
}

/// Checks an audience rule, resolving `computed.KEY` with `computed`.
pub(crate) fn check_rule_in<'s>(
    src: &'s str,
    expr: &Expr,
    computed: Option<ComputedTypes<'s>>,
) -> Result<()> {
    let c = Checker { src, computed };
    let t = c.infer(
        expr,
        Ctx {
            in_where: false,
            allow_unique: false,
        },
    )?;
    if t != Type::Bool {
        let mut msg = format!("expected a condition (true/false), found {}", noun(expr, t));
        if t == Type::Any {
            msg.push_str(
                "; compare it with something, like ... == \"value\", or test it with exists(...)",
            );
        }
        return Err(c.err(expr.span, msg));
    }
    Ok(())
}

/// Checks a computed-trait value expression and returns its type.
pub(crate) fn check_value(src: &str, expr: &Expr) -> Result<Type> {
    let c = Checker {
        src,
        computed: None,
    };
    c.value_shape(expr, true)?;
    c.infer(
        expr,
        Ctx {
            in_where: false,
            allow_unique: true,
        },
    )
}

/// What an expression is, in words ("a number expression", "the string \"x\"").
fn noun(e: &Expr, t: Type) -> String {
    match &e.kind {
        ExprKind::Literal(Literal::Bool(b)) => format!("the constant {b}"),
        ExprKind::Literal(Literal::Number(n)) => format!("the number {n}"),
        ExprKind::Literal(Literal::String(s)) => format!("the string {s:?}"),
        ExprKind::Literal(Literal::Duration(ms)) => format!("the duration {}", fmt_duration(*ms)),
        ExprKind::List(_) => "a list".to_string(),
        ExprKind::Trait(k) => format!("a trait value (trait.{k})"),
        ExprKind::Computed(k) => format!("a computed trait value (computed.{k})"),
        ExprKind::Property(k) => format!("an event property value ({k})"),
        ExprKind::Aggregate { func, .. } if t == Type::Any => {
            format!("the value of {}()", func.name())
        }
        ExprKind::Aggregate { func, .. } if t == Type::List => {
            format!("the list {}() returns", func.name())
        }
        ExprKind::Since(_) => "a duration (since)".to_string(),
        ExprKind::MemberFor(_) => "a duration (member_for)".to_string(),
        _ => type_word(t).to_string(),
    }
}

fn type_word(t: Type) -> &'static str {
    match t {
        Type::Bool => "a condition",
        Type::Number => "a number expression",
        Type::String => "a string",
        Type::Duration => "a duration",
        Type::List => "a list",
        Type::Any => "a value",
    }
}

/// A short type name for "cannot compare X with Y".
fn kind_word(t: Type) -> &'static str {
    match t {
        Type::Bool => "true/false",
        Type::Number => "a number",
        Type::String => "a string",
        Type::Duration => "a duration",
        Type::List => "a list",
        Type::Any => "a value",
    }
}

/// Formats milliseconds with the largest exact unit (`86400000` → `1d`).
pub(crate) fn fmt_duration(ms: i64) -> String {
    for (unit, per) in [
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

fn literal_type(l: &Literal) -> Type {
    match l {
        Literal::Bool(_) => Type::Bool,
        Literal::Number(_) => Type::Number,
        Literal::String(_) => Type::String,
        Literal::Duration(_) => Type::Duration,
    }
}

fn is_duration_literal(e: &Expr) -> bool {
    matches!(e.kind, ExprKind::Literal(Literal::Duration(_)))
}

/// A duration suggestion for a number the user compared with a duration.
fn suggest_duration(e: &Expr) -> String {
    match e.kind {
        ExprKind::Literal(Literal::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n < 1e12 => {
            format!("{n}d")
        }
        _ => "3d".to_string(),
    }
}

impl Checker<'_> {
    fn err(&self, at: Span, msg: impl Into<String>) -> SegmintError {
        SegmintError::RuleType(RuleError::at(self.src, at.start, at.end, msg))
    }

    /// A computed-trait value is an aggregate, or arithmetic over
    /// aggregates and number literals.
    fn value_shape(&self, e: &Expr, top: bool) -> Result<()> {
        let bad = |what: String| {
            self.err(
                e.span,
                format!(
                    "a computed trait must be an aggregate over events, like sum(\"Order Completed\", revenue, 30d) or unique(\"Product Viewed\", category); found {what}"
                ),
            )
        };
        match &e.kind {
            ExprKind::Aggregate { .. } => Ok(()),
            ExprKind::Binary {
                op: BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div,
                lhs,
                rhs,
            } => {
                self.value_shape(lhs, false)?;
                self.value_shape(rhs, false)?;
                if top && !has_aggregate(e) {
                    return Err(bad("arithmetic without any aggregate".to_string()));
                }
                Ok(())
            }
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => {
                self.value_shape(expr, false)?;
                if top && !has_aggregate(e) {
                    return Err(bad("a constant".to_string()));
                }
                Ok(())
            }
            ExprKind::Literal(Literal::Number(_)) if !top => Ok(()),
            ExprKind::Binary { op, .. } => Err(bad(format!("a '{}' expression", op.symbol()))),
            ExprKind::Between { .. } => Err(bad("a 'between' condition".to_string())),
            ExprKind::Unary {
                op: UnaryOp::Not, ..
            } => Err(bad("a 'not' condition".to_string())),
            ExprKind::InAudience(_) => Err(bad("in_audience()".to_string())),
            ExprKind::Since(_) => Err(bad("since()".to_string())),
            ExprKind::MemberFor(_) => Err(bad("member_for()".to_string())),
            ExprKind::Exists(_) => Err(bad("exists()".to_string())),
            _ => Err(bad(noun(e, Type::Any))),
        }
    }

    fn where_forbidden(&self, e: &Expr, what: &str) -> SegmintError {
        self.err(
            e.span,
            format!(
                "a where filter can only test event properties and literals; {what} is not allowed inside it (move it outside the aggregate, joined with 'and')"
            ),
        )
    }

    fn check_selector(&self, sel: &Selector, cx: Ctx) -> Result<()> {
        if let Some(f) = &sel.filter {
            let inner = Ctx {
                in_where: true,
                ..cx
            };
            let t = self.infer(f, inner)?;
            if t != Type::Bool {
                return Err(self.err(
                    f.span,
                    format!(
                        "a where filter must be a condition (true/false), found {}",
                        noun(f, t)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn infer(&self, e: &Expr, cx: Ctx) -> Result<Type> {
        match &e.kind {
            ExprKind::Literal(l) => Ok(literal_type(l)),
            ExprKind::List(items) => {
                for item in items {
                    match &item.kind {
                        ExprKind::Literal(Literal::Duration(_)) => {
                            return Err(self.err(
                                item.span,
                                "list elements must be strings, numbers or true/false, found a duration",
                            ));
                        }
                        ExprKind::Literal(_) => {}
                        _ => {
                            return Err(self.err(item.span, "list elements must be literals"));
                        }
                    }
                }
                Ok(Type::List)
            }
            ExprKind::Trait(k) => {
                if cx.in_where {
                    return Err(self.where_forbidden(e, &format!("trait.{k}")));
                }
                Ok(Type::Any)
            }
            ExprKind::Computed(k) => {
                if cx.in_where {
                    return Err(self.where_forbidden(e, &format!("computed.{k}")));
                }
                match self.computed {
                    Some(resolve) => resolve(k).map_err(|msg| self.err(e.span, msg)),
                    None => Ok(Type::Any),
                }
            }
            ExprKind::Property(k) => {
                if !cx.in_where {
                    return Err(self.err(
                        e.span,
                        format!("the event property '{k}' can only be used inside a where filter"),
                    ));
                }
                Ok(Type::Any)
            }
            ExprKind::Aggregate {
                func,
                selector,
                window,
                ..
            } => {
                if cx.in_where {
                    return Err(self.err(
                        e.span,
                        format!(
                            "aggregates cannot be nested: {}() is not allowed inside a where filter",
                            func.name()
                        ),
                    ));
                }
                if *func == AggFunc::Unique && !cx.allow_unique {
                    return Err(self.err(
                        e.span,
                        "unique() is only for computed traits; in a rule use distinct() to count distinct values",
                    ));
                }
                self.check_selector(selector, cx)?;
                if let Window::SinceEvent(sel) = window {
                    self.check_selector(sel, cx)?;
                }
                Ok(match func {
                    AggFunc::Did => Type::Bool,
                    AggFunc::Count
                    | AggFunc::Distinct
                    | AggFunc::Sum
                    | AggFunc::Avg
                    | AggFunc::Min
                    | AggFunc::Max => Type::Number,
                    AggFunc::MostFrequent | AggFunc::First | AggFunc::Last => Type::Any,
                    AggFunc::Unique => Type::List,
                })
            }
            ExprKind::Since(target) => {
                if cx.in_where {
                    return Err(self.where_forbidden(e, "since()"));
                }
                if let SinceTarget::Event(sel) = target {
                    self.check_selector(sel, cx)?;
                }
                Ok(Type::Duration)
            }
            ExprKind::MemberFor(_) => {
                if cx.in_where {
                    return Err(self.where_forbidden(e, "member_for()"));
                }
                Ok(Type::Duration)
            }
            ExprKind::InAudience(_) => {
                if cx.in_where {
                    return Err(self.where_forbidden(e, "in_audience()"));
                }
                Ok(Type::Bool)
            }
            ExprKind::Exists(inner) => {
                if !matches!(
                    inner.kind,
                    ExprKind::Trait(_)
                        | ExprKind::Computed(_)
                        | ExprKind::Property(_)
                        | ExprKind::Aggregate { .. }
                ) {
                    return Err(self.err(
                        inner.span,
                        "exists() takes a trait, a computed trait, an event property or an aggregate, like exists(trait.email)",
                    ));
                }
                self.infer(inner, cx)?;
                Ok(Type::Bool)
            }
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => {
                let t = self.infer(expr, cx)?;
                if t != Type::Bool {
                    return Err(self.err(
                        expr.span,
                        format!(
                            "'not' needs a condition (true/false), found {}",
                            noun(expr, t)
                        ),
                    ));
                }
                Ok(Type::Bool)
            }
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => {
                let t = self.infer(expr, cx)?;
                if !matches!(t, Type::Number | Type::Any) {
                    return Err(self.err(
                        expr.span,
                        format!("'-' needs a number, found {}", noun(expr, t)),
                    ));
                }
                Ok(Type::Number)
            }
            ExprKind::Binary { op, lhs, rhs } => self.binary(e, *op, lhs, rhs, cx),
            ExprKind::Between {
                expr, low, high, ..
            } => self.between(expr, low, high, cx),
        }
    }

    fn binary(&self, e: &Expr, op: BinaryOp, lhs: &Expr, rhs: &Expr, cx: Ctx) -> Result<Type> {
        use BinaryOp as B;
        match op {
            B::And | B::Or => {
                for side in [lhs, rhs] {
                    let t = self.infer(side, cx)?;
                    if t != Type::Bool {
                        return Err(self.err(
                            side.span,
                            format!(
                                "'{}' needs a condition (true/false) on both sides, found {}",
                                op.symbol(),
                                noun(side, t)
                            ),
                        ));
                    }
                }
                Ok(Type::Bool)
            }
            B::Add | B::Sub | B::Mul | B::Div => {
                for side in [lhs, rhs] {
                    let t = self.infer(side, cx)?;
                    if !matches!(t, Type::Number | Type::Any) {
                        let extra = if t == Type::Duration {
                            "; durations can only be compared with duration literals"
                        } else {
                            ""
                        };
                        return Err(self.err(
                            side.span,
                            format!(
                                "'{}' needs numbers, found {}{extra}",
                                op.symbol(),
                                noun(side, t)
                            ),
                        ));
                    }
                }
                Ok(Type::Number)
            }
            B::Eq | B::Ne | B::Lt | B::Le | B::Gt | B::Ge => {
                self.compare(e, op, lhs, rhs, cx)?;
                Ok(Type::Bool)
            }
            B::In | B::NotIn => {
                let lt = self.infer(lhs, cx)?;
                let ExprKind::List(items) = &rhs.kind else {
                    return Err(self.err(
                        rhs.span,
                        format!(
                            "expected a list like [\"a\", \"b\"] after '{}', found {}",
                            op.symbol(),
                            noun(rhs, Type::Any)
                        ),
                    ));
                };
                // A list value (a list-typed computed trait) tests any element;
                // a list literal on the left is an error.
                let list_value = lt == Type::List && !matches!(lhs.kind, ExprKind::List(_));
                let lt = if list_value { Type::Any } else { lt };
                match lt {
                    Type::Duration | Type::List => {
                        return Err(self.err(
                            lhs.span,
                            format!(
                                "'{}' tests a string, number or true/false value, found {}{}",
                                op.symbol(),
                                noun(lhs, lt),
                                if lt == Type::Duration {
                                    "; use 'between' for durations"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                    Type::Number | Type::String | Type::Bool => {
                        for item in items {
                            if let ExprKind::Literal(l) = &item.kind {
                                let it = literal_type(l);
                                if it != lt {
                                    return Err(self.err(
                                        item.span,
                                        format!(
                                            "cannot compare {} with {}",
                                            kind_word(lt),
                                            kind_word(it)
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    Type::Any => {}
                }
                self.infer(rhs, cx)?;
                Ok(Type::Bool)
            }
            B::Contains | B::StartsWith | B::EndsWith => {
                let lt = self.infer(lhs, cx)?;
                let list_ok =
                    op == B::Contains && lt == Type::List && !matches!(lhs.kind, ExprKind::List(_));
                if !matches!(lt, Type::String | Type::Any) && !list_ok {
                    return Err(self.err(
                        lhs.span,
                        format!(
                            "'{}' works on strings{}, found {}",
                            op.symbol(),
                            if op == B::Contains {
                                " and lists of strings"
                            } else {
                                ""
                            },
                            noun(lhs, lt)
                        ),
                    ));
                }
                if !matches!(rhs.kind, ExprKind::Literal(Literal::String(_))) {
                    let rt = self.infer(rhs, cx)?;
                    return Err(self.err(
                        rhs.span,
                        format!(
                            "expected a string in quotes after '{}', like {} \"gmail\", found {}",
                            op.symbol(),
                            op.symbol(),
                            noun(rhs, rt)
                        ),
                    ));
                }
                Ok(Type::Bool)
            }
        }
    }

    fn compare(&self, e: &Expr, op: BinaryOp, lhs: &Expr, rhs: &Expr, cx: Ctx) -> Result<()> {
        let lt = self.infer(lhs, cx)?;
        let rt = self.infer(rhs, cx)?;
        for (side, t) in [(lhs, lt), (rhs, rt)] {
            if t == Type::List {
                return Err(self.err(
                    side.span,
                    format!(
                        "cannot use {} with '{}'; a list can only follow 'in' or 'not in'",
                        noun(side, t),
                        op.symbol()
                    ),
                ));
            }
        }
        let ordering = !matches!(op, BinaryOp::Eq | BinaryOp::Ne);
        use Type as T;
        match (lt, rt) {
            (T::Duration, T::Duration) => {
                if !is_duration_literal(lhs) && !is_duration_literal(rhs) {
                    return Err(self.err(
                        e.span,
                        "a duration can only be compared with a duration literal, like since(\"X\") > 7d",
                    ));
                }
                Ok(())
            }
            (T::Duration, _) | (_, T::Duration) => {
                let (dur, other, ot) = if lt == T::Duration {
                    (lhs, rhs, rt)
                } else {
                    (rhs, lhs, lt)
                };
                if ot == T::Number {
                    return Err(self.err(
                        other.span,
                        format!(
                            "cannot compare a duration with a number; write a duration like {}",
                            suggest_duration(other)
                        ),
                    ));
                }
                if is_duration_literal(dur) {
                    return Err(self.err(
                        dur.span,
                        format!(
                            "cannot compare {} with a duration; durations come from since(...) and member_for(...)",
                            noun(other, ot)
                        ),
                    ));
                }
                Err(self.err(
                    other.span,
                    format!(
                        "cannot compare a duration with {}; write a duration like 3d",
                        noun(other, ot)
                    ),
                ))
            }
            (T::Bool, _) | (_, T::Bool) if ordering => Err(self.err(
                e.span,
                format!(
                    "true/false values can only be compared with == or !=, not '{}'",
                    op.symbol()
                ),
            )),
            (T::Any, _) | (_, T::Any) => Ok(()),
            (a, b) if a == b => Ok(()),
            (a, b) => Err(self.err(
                rhs.span,
                format!("cannot compare {} with {}", kind_word(a), kind_word(b)),
            )),
        }
    }

    fn between(&self, expr: &Expr, low: &Expr, high: &Expr, cx: Ctx) -> Result<Type> {
        let t = self.infer(expr, cx)?;
        if matches!(t, Type::Bool | Type::List) {
            return Err(self.err(
                expr.span,
                format!(
                    "'between' needs a number, string or duration, found {}",
                    noun(expr, t)
                ),
            ));
        }
        let mut bound_types = Vec::new();
        for b in [low, high] {
            let ExprKind::Literal(l) = &b.kind else {
                let bt = self.infer(b, cx)?;
                return Err(self.err(
                    b.span,
                    format!(
                        "the bounds of 'between' must be literals, like 10, \"m\" or 60d, found {}",
                        noun(b, bt)
                    ),
                ));
            };
            let bt = literal_type(l);
            match (t, bt) {
                (Type::Duration, Type::Duration) => {}
                (Type::Duration, Type::Number) => {
                    return Err(self.err(
                        b.span,
                        format!(
                            "cannot compare a duration with a number; write a duration like {}",
                            suggest_duration(b)
                        ),
                    ));
                }
                (_, Type::Bool) => {
                    return Err(self.err(
                        b.span,
                        "the bounds of 'between' must be numbers, strings or durations",
                    ));
                }
                (Type::Any, Type::Duration) => {
                    return Err(self.err(
                        b.span,
                        format!(
                            "cannot compare {} with a duration; durations come from since(...) and member_for(...)",
                            noun(expr, t)
                        ),
                    ));
                }
                (Type::Any, _) => {}
                (a, b2) if a == b2 => {}
                (a, b2) => {
                    return Err(self.err(
                        b.span,
                        format!("cannot compare {} with {}", kind_word(a), kind_word(b2)),
                    ));
                }
            }
            bound_types.push(bt);
        }
        if bound_types[0] != bound_types[1] {
            return Err(self.err(
                high.span,
                format!(
                    "both bounds of 'between' must have the same type; found {} and {}",
                    kind_word(bound_types[0]),
                    kind_word(bound_types[1])
                ),
            ));
        }
        let inverted = match (&low.kind, &high.kind) {
            (ExprKind::Literal(Literal::Number(a)), ExprKind::Literal(Literal::Number(b))) => a > b,
            (ExprKind::Literal(Literal::Duration(a)), ExprKind::Literal(Literal::Duration(b))) => {
                a > b
            }
            (ExprKind::Literal(Literal::String(a)), ExprKind::Literal(Literal::String(b))) => a > b,
            _ => false,
        };
        if inverted {
            let show = |x: &Expr| match &x.kind {
                ExprKind::Literal(Literal::Duration(ms)) => fmt_duration(*ms),
                _ => self.src[x.span.start..x.span.end].to_string(),
            };
            return Err(self.err(
                Span { start: low.span.start, end: high.span.end },
                format!(
                    "empty range: the lower bound {} is greater than the upper bound {}; write the smaller bound first",
                    show(low),
                    show(high)
                ),
            ));
        }
        Ok(Type::Bool)
    }
}

fn has_aggregate(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Aggregate { .. } => true,
        ExprKind::Binary { lhs, rhs, .. } => has_aggregate(lhs) || has_aggregate(rhs),
        ExprKind::Unary { expr, .. } => has_aggregate(expr),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compile_rule, compile_value, Type};
    use crate::error::SegmintError;

    /// Asserts a type error at `line:col` whose message contains `msg`.
    #[track_caller]
    fn type_err(src: &str, line: usize, col: usize, msg: &str) {
        match compile_rule(src) {
            Err(SegmintError::RuleType(err)) => {
                assert!(
                    err.message.contains(msg),
                    "{src:?}: message {:?} lacks {msg:?}",
                    err.message
                );
                assert_eq!(
                    (err.line, err.column),
                    (line, col),
                    "{src:?}: {}",
                    err.message
                );
            }
            other => panic!("{src:?}: expected a type error, got {other:?}"),
        }
    }

    #[track_caller]
    fn value_err(src: &str, line: usize, col: usize, msg: &str) {
        match compile_value(src) {
            Err(SegmintError::RuleType(err)) => {
                assert!(
                    err.message.contains(msg),
                    "{src:?}: message {:?} lacks {msg:?}",
                    err.message
                );
                assert_eq!(
                    (err.line, err.column),
                    (line, col),
                    "{src:?}: {}",
                    err.message
                );
            }
            other => panic!("{src:?}: expected a type error, got {other:?}"),
        }
    }

    #[track_caller]
    fn ok(src: &str) {
        if let Err(err) = compile_rule(src) {
            panic!("{src:?}: {err}");
        }
    }

    #[test]
    fn well_typed_rules() {
        ok(r#"trait.age >= 18 and trait.vip == true and trait.name != "x""#);
        ok(r#"trait.a == trait.b"#);
        ok(r#"computed.ltv > sum("Order Completed", revenue) * 2"#);
        ok(r#"-trait.balance > 3"#);
        ok(r#"since("X") > 1d and 2h <= since(trait.created_at)"#);
        ok(r#"since("X") not between 1d and 2d"#);
        ok(r#"trait.score between -5 and 5.5"#);
        ok(r#"trait.tier between "a" and "c""#);
        ok(r#"count("X") between 1 and 3"#);
        ok(r#"trait.tags contains "beta" and most_frequent("V", category) in ["a", "b"]"#);
        ok(r#"did("X" where exists(coupon) and not (price > 10 or tags contains "sale"))"#);
        ok(r#"exists(computed.ltv) and exists(last("X", category)) and not exists(trait.email)"#);
        ok(r#"did("X") == true and in_audience("a") != false"#);
        ok(r#"count("A" where a in [1, 2] and b not in ["x"] and c between 1 and 2) > 0"#);
        ok(r#"trait.n in [1, "a", true]"#);
        ok(r#"count("A", since "B" where x == 1) == 0"#);
        ok(&format!("{} == 0", vec!["count(\"X\")"; 150].join(" + ")));
    }

    #[test]
    fn value_types() {
        let t = |s: &str| compile_value(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).1;
        assert_eq!(t(r#"sum("Order Completed", revenue, 30d)"#), Type::Number);
        assert_eq!(t(r#"unique("Product Viewed", category)"#), Type::List);
        assert_eq!(t(r#"most_frequent("Product Viewed", category)"#), Type::Any);
        assert_eq!(t(r#"did("X", 7d)"#), Type::Bool);
        assert_eq!(
            t(r#"sum("Order Completed", revenue) / count("Order Completed") * 100"#),
            Type::Number
        );
        assert_eq!(t(r#"-count("X")"#), Type::Number);
    }

    #[test]
    fn ill_typed_rules() {
        type_err(
            r#"count("X") + 1"#,
            1,
            1,
            "expected a condition (true/false), found a number expression",
        );
        type_err(
            r#"trait.vip"#,
            1,
            1,
            "expected a condition (true/false), found a trait value (trait.vip)",
        );
        type_err(
            r#"since("X")"#,
            1,
            1,
            "expected a condition (true/false), found a duration",
        );
        type_err(
            r#""yes""#,
            1,
            1,
            "expected a condition (true/false), found the string \"yes\"",
        );
        type_err(
            r#"since("X") > 3"#,
            1,
            14,
            "cannot compare a duration with a number; write a duration like 3d",
        );
        type_err(r#"5 < member_for("a")"#, 1, 1, "write a duration like 5d");
        type_err(
            r#"trait.age > 3d"#,
            1,
            13,
            "cannot compare a trait value (trait.age) with a duration",
        );
        type_err(
            r#"since("X") > since("Y")"#,
            1,
            1,
            "can only be compared with a duration literal",
        );
        type_err(
            r#"since("X") == "1d""#,
            1,
            15,
            "cannot compare a duration with the string",
        );
        type_err(
            r#"count("X") == "3""#,
            1,
            15,
            "cannot compare a number with a string",
        );
        type_err(
            r#"did("X") > true"#,
            1,
            1,
            "can only be compared with == or !=",
        );
        type_err(
            r#"count("X") and trait.a == 1"#,
            1,
            1,
            "'and' needs a condition (true/false) on both sides, found a number expression",
        );
        type_err(r#"trait.a == 1 or 3"#, 1, 17, "'or' needs a condition");
        type_err(r#"not count("X")"#, 1, 5, "'not' needs a condition");
        type_err(
            r#"did("X") + 1 > 2"#,
            1,
            1,
            "'+' needs numbers, found a condition",
        );
        type_err(
            r#"since("X") + 1d > 2d"#,
            1,
            1,
            "'+' needs numbers, found a duration",
        );
        type_err(r#"-"a" == trait.x"#, 1, 2, "'-' needs a number");
        type_err(
            r#"trait.plan in "pro""#,
            1,
            15,
            "expected a list like [\"a\", \"b\"] after 'in'",
        );
        type_err(r#"trait.plan not in trait.plans"#, 1, 19, "expected a list");
        type_err(
            r#"count("X") in [1, "two"]"#,
            1,
            19,
            "cannot compare a number with a string",
        );
        type_err(
            r#"since("X") in [1d, 2d]"#,
            1,
            1,
            "use 'between' for durations",
        );
        type_err(
            r#"trait.a in [1d]"#,
            1,
            13,
            "list elements must be strings, numbers or true/false",
        );
        type_err(
            r#"trait.a == [1, 2]"#,
            1,
            12,
            "a list can only follow 'in' or 'not in'",
        );
        type_err(
            r#"since("X") between 60 and 120d"#,
            1,
            20,
            "cannot compare a duration with a number; write a duration like 60d",
        );
        type_err(
            r#"count("X") between 1 and "9""#,
            1,
            26,
            "cannot compare a number with a string",
        );
        type_err(
            r#"trait.a between 1 and "z""#,
            1,
            23,
            "both bounds of 'between' must have the same type",
        );
        type_err(
            r#"trait.a between 1 and trait.b"#,
            1,
            23,
            "the bounds of 'between' must be literals",
        );
        type_err(
            r#"trait.a between 1d and 2d"#,
            1,
            17,
            "cannot compare a trait value (trait.a) with a duration",
        );
        type_err(
            r#"did("X") between 1 and 2"#,
            1,
            1,
            "'between' needs a number, string or duration",
        );
        type_err(
            r#"since("X") between 120d and 60d"#,
            1,
            20,
            "empty range: the lower bound 120d is greater than the upper bound 60d",
        );
        type_err(
            r#"count("X") contains "a""#,
            1,
            1,
            "'contains' works on strings",
        );
        type_err(
            r#"trait.email ends_with trait.domain"#,
            1,
            23,
            "expected a string in quotes after 'ends_with'",
        );
        type_err(r#"count("X" where trait.country == "US") > 1"#, 1, 17, "a where filter can only test event properties and literals; trait.country is not allowed");
        type_err(
            r#"count("X" where count("Y") > 1) > 1"#,
            1,
            17,
            "aggregates cannot be nested",
        );
        type_err(
            r#"count("X" where in_audience("a")) > 1"#,
            1,
            17,
            "in_audience() is not allowed inside it",
        );
        type_err(r#"count("X" where category) > 1"#, 1, 17, "a where filter must be a condition (true/false), found an event property value (category)");
        type_err(
            r#"count("X" where price + 1) > 1"#,
            1,
            17,
            "a where filter must be a condition",
        );
        type_err(
            r#"unique("X", category) contains "a""#,
            1,
            1,
            "unique() is only for computed traits",
        );
        type_err(
            r#"exists(1)"#,
            1,
            8,
            "exists() takes a trait, a computed trait, an event property or an aggregate",
        );
        type_err(r#"exists(since("X"))"#, 1, 8, "exists() takes a trait");
        type_err(
            "trait.a == 1 and\n  since(\"X\") > 30",
            2,
            16,
            "write a duration like 30d",
        );
        type_err(
            "did(\"X\")\n  and count(\"Y\" where\n     trait.a == 1) > 0",
            3,
            6,
            "trait.a is not allowed",
        );
    }

    #[test]
    fn ill_typed_values() {
        value_err(
            r#"trait.ltv"#,
            1,
            1,
            "a computed trait must be an aggregate over events",
        );
        value_err(r#"count("X") > 3"#, 1, 1, "found a '>' expression");
        value_err(r#"1 + 2"#, 1, 1, "arithmetic without any aggregate");
        value_err(
            r#"sum("X", v) + trait.a"#,
            1,
            15,
            "a computed trait must be an aggregate",
        );
        value_err(
            r#"unique("X", category) + 1"#,
            1,
            1,
            "'+' needs numbers, found the list unique() returns",
        );
        value_err(r#"since("X")"#, 1, 1, "found since()");
    }
}
