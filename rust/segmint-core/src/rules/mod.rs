//! The rule language (DESIGN.md §3, docs/rules.md): parsing to an
//! [`ast::Expr`] and type checking.
//!
//! Rules (audience conditions) go through [`compile_rule`]; computed-trait
//! value expressions through [`compile_value`]. Both report errors as
//! [`SegmintError::RuleSyntax`](crate::SegmintError::RuleSyntax) or
//! [`SegmintError::RuleType`](crate::SegmintError::RuleType) with the line,
//! column and a caret under the offending span.

pub mod ast;
mod parser;
mod typecheck;

use std::fmt;

use crate::error::Result;

/// The static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// A condition: `true` / `false`.
    Bool,
    /// A number (f64).
    Number,
    /// A string.
    String,
    /// A duration in milliseconds (`since(...)`, `member_for(...)`, `30d`).
    Duration,
    /// A list (`[..]` literals, `unique(...)`).
    List,
    /// Dynamically typed: traits, computed traits, event properties,
    /// `most_frequent` / `first` / `last`.
    Any,
}

impl Type {
    /// The type's name as shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Number => "number",
            Type::String => "string",
            Type::Duration => "duration",
            Type::List => "list",
            Type::Any => "any",
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses rule or value text into a syntax tree, without type checking.
///
/// Errors are [`SegmintError::RuleSyntax`](crate::SegmintError::RuleSyntax).
pub fn parse_rule(src: &str) -> Result<ast::Expr> {
    parser::parse(src)
}

/// Type-checks a parsed audience rule: it must be a condition (`Bool`).
///
/// `src` is the text `expr` was parsed from (for error positions). Errors
/// are [`SegmintError::RuleType`](crate::SegmintError::RuleType). Audience
/// and computed-trait keys are not resolved here.
pub fn check_rule(src: &str, expr: &ast::Expr) -> Result<()> {
    typecheck::check_rule(src, expr)
}

/// Type-checks a parsed audience rule like [`check_rule`], resolving every
/// `computed.KEY` through `computed`: its type is the computed trait's type
/// (so `computed.ltv > "x"` is an error when `ltv` is a number), and a key it
/// rejects is a [`SegmintError::RuleType`](crate::SegmintError::RuleType)
/// error at that key's line and column, with the resolver's message.
pub fn check_rule_in(
    src: &str,
    expr: &ast::Expr,
    computed: &dyn Fn(&str) -> std::result::Result<Type, String>,
) -> Result<()> {
    typecheck::check_rule_in(src, expr, Some(computed))
}

/// Type-checks a parsed computed-trait value expression: an aggregate such
/// as `sum("Order Completed", revenue, 30d)` or `unique("Product Viewed",
/// category)`, or arithmetic over aggregates and number literals. Returns
/// the value's type.
pub fn check_value(src: &str, expr: &ast::Expr) -> Result<Type> {
    typecheck::check_value(src, expr)
}

/// Parses and type-checks an audience rule.
pub fn compile_rule(src: &str) -> Result<ast::Expr> {
    let expr = parse_rule(src)?;
    check_rule(src, &expr)?;
    Ok(expr)
}

/// Parses and type-checks a computed-trait value expression; returns the
/// expression and its type.
pub fn compile_value(src: &str) -> Result<(ast::Expr, Type)> {
    let expr = parse_rule(src)?;
    let ty = check_value(src, &expr)?;
    Ok((expr, ty))
}
