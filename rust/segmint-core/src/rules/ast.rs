//! The syntax tree of the rule language, produced by [`super::parse_rule`].
//!
//! Every node carries the byte [`Span`] it came from so that type errors and
//! `explain` output can point back at the source text.

/// A half-open byte range `[start, end)` in the rule source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte of the node.
    pub start: usize,
    /// One past the last byte of the node.
    pub end: usize,
}

/// An expression with the span it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it stands in the source.
    pub span: Span,
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `true` / `false`.
    Bool(bool),
    /// A number: `3`, `-1.5`.
    Number(f64),
    /// A string: `"US"`.
    String(String),
    /// A duration in milliseconds: `30d`, `2h`, `90s`, `15m`, `1w`.
    Duration(i64),
}

/// The aggregation functions over an event selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// Number of matching events.
    Count,
    /// `count(...) >= 1`, as a boolean.
    Did,
    /// Sum of a numeric property.
    Sum,
    /// Mean of a numeric property.
    Avg,
    /// Smallest numeric property value.
    Min,
    /// Largest numeric property value.
    Max,
    /// Number of distinct property values.
    Distinct,
    /// The most frequent property value (ties: smallest value).
    MostFrequent,
    /// The property value of the earliest matching event.
    First,
    /// The property value of the latest matching event.
    Last,
    /// The sorted list of distinct property values (computed traits only).
    Unique,
}

impl AggFunc {
    /// The function's name in the rule language.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Did => "did",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Distinct => "distinct",
            AggFunc::MostFrequent => "most_frequent",
            AggFunc::First => "first",
            AggFunc::Last => "last",
            AggFunc::Unique => "unique",
        }
    }

    /// Whether the function takes a property argument (`sum(E, revenue)`).
    pub fn takes_property(self) -> bool {
        !matches!(self, AggFunc::Count | AggFunc::Did)
    }
}

/// Which events an aggregation looks at: a name and an optional `where` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The event name, e.g. `Order Completed`.
    pub event: String,
    /// The `where` filter over properties and `context.*`, if any.
    pub filter: Option<Box<Expr>>,
    /// Span of the whole selector (name and filter).
    pub span: Span,
}

/// The time range an aggregation covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// All time.
    All,
    /// Events with timestamp in `(now - d, now]`; milliseconds.
    Last(i64),
    /// Events strictly after the latest event matching the selector.
    SinceEvent(Selector),
}

/// What `since(...)` measures from.
#[derive(Debug, Clone, PartialEq)]
pub enum SinceTarget {
    /// The latest event matching the selector.
    Event(Selector),
    /// A timestamp trait (`since(trait.created_at)`); the dotted key.
    Trait(String),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// Boolean `not`.
    Not,
    /// Arithmetic negation.
    Neg,
}

/// Binary operators, loosest-binding first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `or`
    Or,
    /// `and`
    And,
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
    /// `in [..]`
    In,
    /// `not in [..]`
    NotIn,
    /// `contains` (substring, or list membership)
    Contains,
    /// `starts_with`
    StartsWith,
    /// `ends_with`
    EndsWith,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl BinaryOp {
    /// The operator as written in the rule language.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::In => "in",
            BinaryOp::NotIn => "not in",
            BinaryOp::Contains => "contains",
            BinaryOp::StartsWith => "starts_with",
            BinaryOp::EndsWith => "ends_with",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }
}

/// The shapes an expression can take.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal value.
    Literal(Literal),
    /// A list literal `["pro", "enterprise"]` (right side of `in` only).
    List(Vec<Expr>),
    /// A trait of the user: `trait.address.city` → `address.city`.
    Trait(String),
    /// A computed trait: `computed.ltv` → `ltv`.
    Computed(String),
    /// An event property inside a `where` filter: `category`,
    /// `context.device.type`, `properties.category` (prefix stripped).
    Property(String),
    /// `count(E, 30d)`, `sum(E, revenue, 365d)`, ...
    Aggregate {
        /// Which function.
        func: AggFunc,
        /// Which events.
        selector: Selector,
        /// The aggregated property, for functions that take one.
        property: Option<String>,
        /// The time range.
        window: Window,
    },
    /// `since(E)` or `since(trait.x)`: a duration.
    Since(SinceTarget),
    /// `member_for("audience")`: how long the user has been a member.
    MemberFor(String),
    /// `in_audience("audience")`.
    InAudience(String),
    /// `exists(x)`: presence test.
    Exists(Box<Expr>),
    /// `not x`, `-x`.
    Unary {
        /// Which operator.
        op: UnaryOp,
        /// The operand.
        expr: Box<Expr>,
    },
    /// `a op b`.
    Binary {
        /// Which operator.
        op: BinaryOp,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `x between lo and hi` (inclusive), or `x not between lo and hi`.
    Between {
        /// The tested value.
        expr: Box<Expr>,
        /// Lower bound (inclusive).
        low: Box<Expr>,
        /// Upper bound (inclusive).
        high: Box<Expr>,
        /// `not between`.
        negated: bool,
    },
}
