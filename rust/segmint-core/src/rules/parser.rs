//! Parsing: a pest lexer (`grammar.pest`) and a recursive-descent parser
//! that builds the [`ast`](super::ast) and reports syntax errors in plain
//! words with the span of the offending token.

use pest::Parser as _;
use pest_derive::Parser;

use super::ast::{
    AggFunc, BinaryOp, Expr, ExprKind, Literal, Selector, SinceTarget, Span, UnaryOp, Window,
};
use crate::error::{Result, RuleError, SegmintError};

#[derive(Parser)]
#[grammar = "rules/grammar.pest"]
struct Lexer;

/// Keywords of the language (case-sensitive, lowercase).
pub(crate) const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "between",
    "where",
    "since",
    "true",
    "false",
    "contains",
    "starts_with",
    "ends_with",
];

/// Every function of the language.
pub(crate) const FUNCTIONS: &[&str] = &[
    "count",
    "did",
    "sum",
    "avg",
    "min",
    "max",
    "distinct",
    "most_frequent",
    "first",
    "last",
    "unique",
    "since",
    "member_for",
    "in_audience",
    "exists",
];

/// Deepest syntax tree the parser accepts (consumers recurse over it).
const MAX_DEPTH: usize = 200;
/// Deepest nesting of parentheses, calls and prefix operators.
const MAX_NESTING: usize = 40;

const MS_PER_UNIT: &[(&str, i64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Number(f64),
    Duration(i64),
    Str(String),
    /// An identifier, keyword, function name or dotted path.
    Name,
    /// An operator or punctuation.
    Sym,
    /// A lexical error: the message and where it points.
    Bad(String, Span),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    span: Span,
}

fn span(start: usize, end: usize) -> Span {
    Span { start, end }
}

/// Parses a rule or value expression (syntax only).
pub(crate) fn parse(src: &str) -> Result<Expr> {
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        in_where: false,
        depth: 0,
        nest: 0,
    };
    if p.peek().tok == Tok::Eof {
        return Err(p.err(
            span(0, 0),
            "empty rule: write a condition, like trait.country == \"US\"",
        ));
    }
    let expr = p.parse_or()?;
    if p.peek().tok != Tok::Eof {
        return Err(p.trailing());
    }
    Ok(expr)
}

// ---------------------------------------------------------------- lexing

fn lex(src: &str) -> Result<Vec<Token>> {
    let mut pairs = Lexer::parse(Rule::tokens, src).map_err(|e| {
        // The grammar accepts every input; this is a safety net.
        let (start, end) = match e.location {
            pest::error::InputLocation::Pos(p) => (p, p),
            pest::error::InputLocation::Span(s) => s,
        };
        SegmintError::RuleSyntax(RuleError::at(
            src,
            start,
            end,
            "could not read the rule here",
        ))
    })?;
    let mut out = Vec::new();
    let mut last_end = 0;
    if let Some(top) = pairs.next() {
        for pair in top.into_inner() {
            let s = pair.as_span();
            let sp = span(s.start(), s.end());
            let text = pair.as_str();
            let tok = match pair.as_rule() {
                Rule::EOI => continue,
                Rule::duration => lex_duration(text, sp),
                Rule::number => match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => Tok::Number(v),
                    _ => Tok::Bad(format!("the number '{}' is too large", short(text)), sp),
                },
                Rule::bad_number => Tok::Bad(bad_number_message(text), sp),
                Rule::dq_string | Rule::sq_string => match unescape(text, sp.start) {
                    Ok(s) => Tok::Str(s),
                    Err((msg, at)) => Tok::Bad(msg, at),
                },
                Rule::unterminated => {
                    let q = &text[..1];
                    Tok::Bad(
                        format!("unterminated string: missing the closing {q} before the end of the line"),
                        sp,
                    )
                }
                Rule::name => Tok::Name,
                Rule::symbol => lex_symbol(text, sp),
                _ => Tok::Bad(unknown_char_message(text), sp),
            };
            last_end = sp.end;
            out.push(Token { tok, span: sp });
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        span: span(last_end, last_end),
    });
    Ok(out)
}

fn lex_duration(text: &str, sp: Span) -> Tok {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let per = MS_PER_UNIT
        .iter()
        .find(|(u, _)| *u == unit)
        .map_or(1, |(_, ms)| *ms);
    match digits.parse::<i64>().ok().and_then(|n| n.checked_mul(per)) {
        Some(ms) => Tok::Duration(ms),
        None => Tok::Bad(format!("the duration '{}' is too large", short(text)), sp),
    }
}

fn bad_number_message(text: &str) -> String {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let rest = &text[digits_end..];
    let is_unit = |u: &str| MS_PER_UNIT.iter().any(|(x, _)| *x == u);
    if let Some(frac) = rest.strip_prefix('.') {
        let fd = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let unit = &frac[fd..];
        if fd > 0 && is_unit(unit) {
            return format!(
                "a duration must be a whole number followed by a unit, found '{}'; use a smaller unit, like 36h instead of 1.5d",
                short(text)
            );
        }
        return format!("expected a number like 3 or 3.5, found '{}'", short(text));
    }
    if rest.chars().all(|c| c.is_ascii_alphabetic()) {
        let hint = match rest.to_ascii_lowercase().as_str() {
            "y" | "yr" | "yrs" | "year" | "years" => "; for a year write 365d",
            "mo" | "mon" | "month" | "months" => "; for a month write 30d",
            "min" | "mins" | "minute" | "minutes" => "; for minutes write m, like 15m",
            "sec" | "secs" | "second" | "seconds" => "; for seconds write s, like 90s",
            "hr" | "hrs" | "hour" | "hours" => "; for hours write h, like 2h",
            "day" | "days" => "; for days write d, like 30d",
            "wk" | "wks" | "week" | "weeks" => "; for weeks write w, like 2w",
            _ => "",
        };
        return format!(
            "expected a duration like 30d or 2h, found '{}': unknown duration unit '{}' (units: ms, s, m, h, d, w){hint}",
            short(text),
            short(rest)
        );
    }
    format!(
        "expected a number like 3 or a duration like 30d, found '{}'",
        short(text)
    )
}

fn lex_symbol(text: &str, sp: Span) -> Tok {
    let cmp = "expected a comparison operator (==, !=, <, <=, >, >=)";
    let msg = match text {
        "=" => format!("{cmp}, found '='; write '==' to test equality"),
        "===" => format!("{cmp}, found '==='; write '=='"),
        "=>" => format!("{cmp}, found '=>'; did you mean '>='?"),
        "=<" => format!("{cmp}, found '=<'; did you mean '<='?"),
        "<>" => format!("{cmp}, found '<>'; write '!=' for 'not equal'"),
        "&&" | "&" => format!("unexpected '{text}'; write 'and' to combine conditions"),
        "||" | "|" => format!("unexpected '{text}'; write 'or' to combine conditions"),
        "!" => "unexpected '!'; write 'not' before a condition, or '!=' to compare".to_string(),
        _ => return Tok::Sym,
    };
    Tok::Bad(msg, sp)
}

fn unknown_char_message(text: &str) -> String {
    match text {
        "." => {
            "unexpected '.'; write dotted names without spaces, like trait.address.city".to_string()
        }
        "{" | "}" => {
            format!("unexpected '{text}'; group conditions with ( and ), lists with [ and ]")
        }
        ";" => "unexpected ';'; combine conditions with 'and' or 'or'".to_string(),
        "%" => "unexpected '%'; the arithmetic operators are + - * /".to_string(),
        _ if text.chars().any(char::is_control) => {
            format!("unexpected character '{}'", text.escape_default())
        }
        _ => format!("unexpected character '{text}'"),
    }
}

/// Decodes a quoted string; on a bad escape returns the message and its span.
fn unescape(text: &str, start: usize) -> std::result::Result<String, (String, Span)> {
    let body = &text[1..text.len() - 1];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((j, e)) = chars.next() else { break };
        match e {
            '"' => out.push('"'),
            '\'' => out.push('\''),
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            _ => {
                let at = start + 1 + i;
                let end = start + 1 + j + e.len_utf8();
                let shown = if e == '\n' {
                    "\\ at the end of a line".to_string()
                } else {
                    format!("'\\{e}'")
                };
                return Err((
                    format!("unknown escape {shown} in string; use \\\" \\' \\\\ \\n or \\t"),
                    span(at, end),
                ));
            }
        }
    }
    Ok(out)
}

/// Shortens text shown in messages.
fn short(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or("");
    if first_line.chars().count() > 40 {
        let cut: String = first_line.chars().take(37).collect();
        format!("{cut}...")
    } else {
        first_line.to_string()
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance (or a prefix match).
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let n = lower.chars().count();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, c)| (*d <= 2 && *d < n) || (n >= 3 && c.starts_with(lower.as_str())))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn agg_func(name: &str) -> Option<AggFunc> {
    Some(match name {
        "count" => AggFunc::Count,
        "did" => AggFunc::Did,
        "sum" => AggFunc::Sum,
        "avg" => AggFunc::Avg,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "distinct" => AggFunc::Distinct,
        "most_frequent" => AggFunc::MostFrequent,
        "first" => AggFunc::First,
        "last" => AggFunc::Last,
        "unique" => AggFunc::Unique,
        _ => return None,
    })
}

fn signature(func: AggFunc) -> String {
    let n = func.name();
    if func.takes_property() {
        format!("{n}(\"Event\", property[, window])")
    } else {
        format!("{n}(\"Event\"[, window])")
    }
}

// ---------------------------------------------------------------- parsing

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    /// Inside a `where` filter: bare names are event properties.
    in_where: bool,
    /// Depth of the tree being built.
    depth: usize,
    /// Nesting of parentheses, calls and prefix operators.
    nest: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek_at(&self, n: usize) -> &Token {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)]
    }

    fn text(&self, t: &Token) -> &'s str {
        &self.src[t.span.start..t.span.end]
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn is_sym(&self, s: &str) -> bool {
        let t = self.peek();
        t.tok == Tok::Sym && self.text(t) == s
    }

    fn is_kw(&self, kw: &str) -> bool {
        self.is_kw_at(0, kw)
    }

    fn is_kw_at(&self, n: usize, kw: &str) -> bool {
        let t = self.peek_at(n);
        t.tok == Tok::Name && self.text(t) == kw
    }

    fn err(&self, at: Span, msg: impl Into<String>) -> SegmintError {
        SegmintError::RuleSyntax(RuleError::at(self.src, at.start, at.end, msg))
    }

    /// An error at the current token (or its own lexical error, if it is malformed).
    fn fail(&self, msg: impl Into<String>) -> SegmintError {
        match &self.peek().tok {
            Tok::Bad(m, at) => self.err(*at, m.clone()),
            _ => self.err(self.peek().span, msg),
        }
    }

    /// How the current token is shown in messages.
    fn found(&self) -> String {
        let t = self.peek();
        match t.tok {
            Tok::Eof => "end of rule".to_string(),
            Tok::Str(_) => short(self.text(t)),
            _ => format!("'{}'", short(self.text(t))),
        }
    }

    fn expected(&self, what: &str) -> SegmintError {
        self.fail(format!("expected {what}, found {}", self.found()))
    }

    fn line_col(&self, offset: usize) -> String {
        let e = RuleError::at(self.src, offset, offset, "");
        format!("{}:{}", e.line, e.column)
    }

    /// Consumes the `)` closing `open` (described as `what`), or explains.
    fn close(&mut self, open: Span, what: &str, hint: &str) -> Result<usize> {
        if self.is_sym(")") {
            return Ok(self.bump().span.end);
        }
        Err(self.fail(format!(
            "expected ')' to close {what} at {}, found {}{hint}",
            self.line_col(open.start),
            self.found()
        )))
    }

    /// Goes one level deeper in the tree: `nested` for parentheses,
    /// prefix operators and calls, which also nest the parser's recursion.
    fn enter(&mut self, nested: bool) -> Result<()> {
        self.depth += 1;
        self.nest += usize::from(nested);
        if self.nest > MAX_NESTING {
            return Err(self.err(
                self.peek().span,
                format!("the rule is nested too deeply (more than {MAX_NESTING} levels of parentheses, calls or prefix operators)"),
            ));
        }
        if self.depth > MAX_DEPTH {
            return Err(self.err(
                self.peek().span,
                format!("the rule is too deep (more than {MAX_DEPTH} levels of operators); for long 'or' chains of one trait use 'in [...]'"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
        self.nest -= 1;
    }

    /// Error for tokens left after a complete rule.
    fn trailing(&self) -> SegmintError {
        let t = self.peek();
        let text = self.text(t);
        if t.tok == Tok::Sym && text == ")" {
            return self.fail("unmatched ')': there is no '(' for it to close");
        }
        let mut msg = format!("unexpected {} after end of rule", self.found());
        if t.tok == Tok::Name {
            let lower = text.to_ascii_lowercase();
            if lower != text && KEYWORDS.contains(&lower.as_str()) {
                msg = format!("unexpected '{text}'; keywords are lowercase: write '{lower}'");
            } else if KEYWORDS.contains(&text) {
                msg.push_str("; expected 'and', 'or' or an operator before it");
            } else {
                msg.push_str("; did you forget 'and' or 'or' before it?");
            }
        } else if matches!(t.tok, Tok::Number(_) | Tok::Str(_) | Tok::Duration(_)) {
            msg.push_str("; did you forget an operator before it?");
        }
        self.fail(msg)
    }

    fn binary(op: BinaryOp, lhs: Expr, rhs: Expr) -> Expr {
        let sp = span(lhs.span.start, rhs.span.end);
        Expr {
            kind: ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            },
            span: sp,
        }
    }

    fn parse_or(&mut self) -> Result<Expr> {
        let mut lhs = self.parse_and()?;
        let mut n = 0;
        while self.is_kw("or") {
            self.bump();
            n += 1;
            self.enter(false)?;
            let rhs = self.parse_and()?;
            lhs = Self::binary(BinaryOp::Or, lhs, rhs);
        }
        self.depth -= n;
        Ok(lhs)
    }

    fn parse_and(&mut self) -> Result<Expr> {
        let mut lhs = self.parse_not()?;
        let mut n = 0;
        while self.is_kw("and") {
            self.bump();
            n += 1;
            self.enter(false)?;
            let rhs = self.parse_not()?;
            lhs = Self::binary(BinaryOp::And, lhs, rhs);
        }
        self.depth -= n;
        Ok(lhs)
    }

    fn parse_not(&mut self) -> Result<Expr> {
        if self.is_kw("not") {
            let not = self.bump();
            self.enter(true)?;
            let expr = self.parse_not()?;
            self.leave();
            let sp = span(not.span.start, expr.span.end);
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op: UnaryOp::Not,
                    expr: Box::new(expr),
                },
                span: sp,
            });
        }
        self.parse_cmp()
    }

    fn cmp_op(&self) -> Option<BinaryOp> {
        let t = self.peek();
        let text = self.text(t);
        match t.tok {
            Tok::Sym => match text {
                "==" => Some(BinaryOp::Eq),
                "!=" => Some(BinaryOp::Ne),
                "<" => Some(BinaryOp::Lt),
                "<=" => Some(BinaryOp::Le),
                ">" => Some(BinaryOp::Gt),
                ">=" => Some(BinaryOp::Ge),
                _ => None,
            },
            Tok::Name => match text {
                "in" => Some(BinaryOp::In),
                "contains" => Some(BinaryOp::Contains),
                "starts_with" => Some(BinaryOp::StartsWith),
                "ends_with" => Some(BinaryOp::EndsWith),
                "not" if self.is_kw_at(1, "in") => Some(BinaryOp::NotIn),
                _ => None,
            },
            _ => None,
        }
    }

    fn at_comparison(&self) -> bool {
        self.cmp_op().is_some()
            || self.is_kw("between")
            || (self.is_kw("not") && self.is_kw_at(1, "between"))
    }

    fn parse_cmp(&mut self) -> Result<Expr> {
        let lhs = self.parse_add()?;
        let expr = if let Some(op) = self.cmp_op() {
            if op == BinaryOp::NotIn {
                self.bump();
            }
            self.bump();
            let rhs = self.parse_add()?;
            Self::binary(op, lhs, rhs)
        } else if self.is_kw("between") || (self.is_kw("not") && self.is_kw_at(1, "between")) {
            let negated = self.is_kw("not");
            if negated {
                self.bump();
            }
            self.bump();
            let low = self.parse_add()?;
            if !self.is_kw("and") {
                let msg = if self.is_sym(",") {
                    "expected 'and' between the bounds, like x between 2h and 24h, found ','"
                        .to_string()
                } else {
                    format!(
                        "expected 'and' between the bounds, like x between 2h and 24h, found {}",
                        self.found()
                    )
                };
                return Err(self.fail(msg));
            }
            self.bump();
            let high = self.parse_add()?;
            let sp = span(lhs.span.start, high.span.end);
            Expr {
                kind: ExprKind::Between {
                    expr: Box::new(lhs),
                    low: Box::new(low),
                    high: Box::new(high),
                    negated,
                },
                span: sp,
            }
        } else if self.is_kw("not") {
            return Err(self.fail(
                "unexpected 'not' after a value; write 'not in', 'not between', or put 'not' before a condition",
            ));
        } else {
            return Ok(lhs);
        };
        if self.at_comparison() {
            return Err(self.fail(format!(
                "comparisons cannot be chained: found {} after a comparison; combine them with 'and', like a < b and b < c",
                self.found()
            )));
        }
        Ok(expr)
    }

    fn parse_add(&mut self) -> Result<Expr> {
        let mut lhs = self.parse_mul()?;
        let mut n = 0;
        loop {
            let op = if self.is_sym("+") {
                BinaryOp::Add
            } else if self.is_sym("-") {
                BinaryOp::Sub
            } else {
                break;
            };
            self.bump();
            n += 1;
            self.enter(false)?;
            let rhs = self.parse_mul()?;
            lhs = Self::binary(op, lhs, rhs);
        }
        self.depth -= n;
        Ok(lhs)
    }

    fn parse_mul(&mut self) -> Result<Expr> {
        let mut lhs = self.parse_unary()?;
        let mut n = 0;
        loop {
            let op = if self.is_sym("*") {
                BinaryOp::Mul
            } else if self.is_sym("/") {
                BinaryOp::Div
            } else {
                break;
            };
            self.bump();
            n += 1;
            self.enter(false)?;
            let rhs = self.parse_unary()?;
            lhs = Self::binary(op, lhs, rhs);
        }
        self.depth -= n;
        Ok(lhs)
    }

    fn parse_unary(&mut self) -> Result<Expr> {
        if self.is_sym("-") {
            let minus = self.bump();
            if let Tok::Number(v) = self.peek().tok {
                let num = self.bump();
                return Ok(Expr {
                    kind: ExprKind::Literal(Literal::Number(-v)),
                    span: span(minus.span.start, num.span.end),
                });
            }
            self.enter(true)?;
            let expr = self.parse_unary()?;
            self.leave();
            let sp = span(minus.span.start, expr.span.end);
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op: UnaryOp::Neg,
                    expr: Box::new(expr),
                },
                span: sp,
            });
        }
        self.parse_primary()
    }

    fn expected_value(&self) -> SegmintError {
        let prev = if self.pos > 0 {
            format!(" after '{}'", short(self.text(&self.toks[self.pos - 1])))
        } else {
            String::new()
        };
        let t = self.peek();
        if t.tok == Tok::Name && self.text(t) == "where" {
            return self.fail("'where' needs an event name before it, like count(\"Product Viewed\" where category == \"shoes\")");
        }
        self.fail(format!(
            "expected a value{prev}, found {} (a value is a number, a \"string\", a duration like 30d, trait.name, or a function like count(...))",
            self.found()
        ))
    }

    fn parse_primary(&mut self) -> Result<Expr> {
        let t = self.peek().clone();
        let lit = |l: Literal| Expr {
            kind: ExprKind::Literal(l),
            span: t.span,
        };
        match &t.tok {
            Tok::Number(v) => {
                self.bump();
                Ok(lit(Literal::Number(*v)))
            }
            Tok::Duration(ms) => {
                self.bump();
                Ok(lit(Literal::Duration(*ms)))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(lit(Literal::String(s.clone())))
            }
            Tok::Sym if self.text(&t) == "(" => {
                self.bump();
                self.enter(true)?;
                let inner = self.parse_or()?;
                self.leave();
                let end = self.close(t.span, "'('", "")?;
                Ok(Expr {
                    kind: inner.kind,
                    span: span(t.span.start, end),
                })
            }
            Tok::Sym if self.text(&t) == "[" => self.parse_list(),
            Tok::Name => self.parse_name(),
            _ => Err(self.expected_value()),
        }
    }

    fn parse_list(&mut self) -> Result<Expr> {
        let open = self.bump();
        let mut items = Vec::new();
        loop {
            if self.is_sym("]") {
                break;
            }
            items.push(self.parse_list_item()?);
            if self.is_sym(",") {
                self.bump();
            } else if !self.is_sym("]") {
                return Err(self.fail(format!(
                    "expected ',' or ']' to close '[' at {}, found {}",
                    self.line_col(open.span.start),
                    self.found()
                )));
            }
        }
        let close = self.bump();
        Ok(Expr {
            kind: ExprKind::List(items),
            span: span(open.span.start, close.span.end),
        })
    }

    fn parse_list_item(&mut self) -> Result<Expr> {
        let t = self.peek().clone();
        let lit = |l: Literal, sp: Span| Expr {
            kind: ExprKind::Literal(l),
            span: sp,
        };
        match &t.tok {
            Tok::Number(v) => {
                self.bump();
                Ok(lit(Literal::Number(*v), t.span))
            }
            Tok::Duration(ms) => {
                self.bump();
                Ok(lit(Literal::Duration(*ms), t.span))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(lit(Literal::String(s.clone()), t.span))
            }
            Tok::Name if matches!(self.text(&t), "true" | "false") => {
                self.bump();
                Ok(lit(Literal::Bool(self.text(&t) == "true"), t.span))
            }
            Tok::Sym if self.text(&t) == "-" => {
                if let Tok::Number(v) = self.peek_at(1).tok {
                    self.bump();
                    let num = self.bump();
                    return Ok(lit(Literal::Number(-v), span(t.span.start, num.span.end)));
                }
                self.bump();
                Err(self.fail(format!(
                    "expected a number after '-' in a list, found {}",
                    self.found()
                )))
            }
            Tok::Sym if self.text(&t) == "[" => Err(self.fail("lists cannot be nested")),
            _ => Err(self.fail(format!(
                "list elements must be literals (a \"string\", a number, true or false), found {}",
                self.found()
            ))),
        }
    }

    /// Checks that no segment of a dotted name is empty.
    fn check_path(&self, t: &Token) -> Result<()> {
        let text = self.text(t);
        let mut offset = t.span.start;
        for (i, seg) in text.split('.').enumerate() {
            if seg.is_empty() && i > 0 {
                let dot = offset - 1;
                return Err(self.err(
                    span(dot, dot + 1),
                    format!("expected a name after '.' in '{}'", short(text)),
                ));
            }
            offset += seg.len() + 1;
        }
        Ok(())
    }

    fn parse_name(&mut self) -> Result<Expr> {
        let t = self.peek().clone();
        let text = self.text(&t);
        let next_paren = {
            let n = self.peek_at(1);
            n.tok == Tok::Sym && self.text(n) == "("
        };
        if text == "true" || text == "false" {
            self.bump();
            return Ok(Expr {
                kind: ExprKind::Literal(Literal::Bool(text == "true")),
                span: t.span,
            });
        }
        if next_paren && !text.contains('.') {
            return self.parse_call();
        }
        if KEYWORDS.contains(&text) {
            return Err(self.expected_value());
        }
        if !self.in_where && FUNCTIONS.contains(&text) {
            return Err(self.fail(format!("expected '(' after '{text}', found {}", {
                let n = self.peek_at(1);
                match n.tok {
                    Tok::Eof => "end of rule".to_string(),
                    _ => format!("'{}'", short(self.text(n))),
                }
            })));
        }
        self.check_path(&t)?;
        let make = |kind| Expr { kind, span: t.span };
        for (prefix, is_trait) in [("trait", true), ("computed", false)] {
            if text == prefix {
                let example = if is_trait {
                    "trait.country"
                } else {
                    "computed.ltv"
                };
                return Err(self.fail(format!("expected a name after '{prefix}', like {example}")));
            }
            if let Some(rest) = text.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
                self.bump();
                let key = rest.to_string();
                return Ok(make(if is_trait {
                    ExprKind::Trait(key)
                } else {
                    ExprKind::Computed(key)
                }));
            }
        }
        let lower = text.to_ascii_lowercase();
        if matches!(lower.as_str(), "null" | "nil" | "none" | "undefined") {
            return Err(self.fail(format!(
                "unknown name '{text}': there is no null literal; test for a missing value with exists(...) or not exists(...)"
            )));
        }
        if lower != text && KEYWORDS.contains(&lower.as_str()) {
            return Err(self.fail(format!(
                "unexpected '{text}'; keywords are lowercase: write '{lower}'"
            )));
        }
        if self.in_where {
            if text == "properties" || text == "context" {
                return Err(self.fail(format!(
                    "expected a name after '{text}', like {text}.{}",
                    if text == "context" {
                        "device.type"
                    } else {
                        "category"
                    }
                )));
            }
            self.bump();
            let key = text.strip_prefix("properties.").unwrap_or(text).to_string();
            return Ok(make(ExprKind::Property(key)));
        }
        let key = text.strip_prefix("properties.").unwrap_or(text);
        Err(self.fail(format!(
            "unknown name '{text}'; did you mean trait.{key}? (bare property names are only allowed inside a where filter)"
        )))
    }

    fn parse_call(&mut self) -> Result<Expr> {
        let name_tok = self.bump();
        let name = self.text(&name_tok);
        self.bump(); // "("
        let what = format!("{name}(");
        self.enter(true)?;
        let kind = if let Some(func) = agg_func(name) {
            let selector = self.parse_selector(name)?;
            let property = if func.takes_property() {
                if self.is_sym(",") {
                    self.bump();
                    Some(self.parse_property(func)?)
                } else if self.is_sym(")") {
                    return Err(self.fail(format!(
                        "{name}() needs a property to aggregate, like {name}(\"Order Completed\", revenue)"
                    )));
                } else {
                    return Err(self.close_after_selector(name_tok.span, &what));
                }
            } else {
                None
            };
            let window = if self.is_sym(",") {
                self.bump();
                self.parse_window(func)?
            } else {
                Window::All
            };
            if self.is_sym(",") {
                return Err(self.fail(format!(
                    "too many arguments to {name}(); expected {}",
                    signature(func)
                )));
            }
            if property.is_none() && window == Window::All {
                // count("X" category == ...) — a forgotten `where`.
                if !self.is_sym(")") {
                    return Err(self.close_after_selector(name_tok.span, &what));
                }
            }
            ExprKind::Aggregate {
                func,
                selector,
                property,
                window,
            }
        } else {
            match name {
                "since" => {
                    let target = self.parse_since_target()?;
                    if self.is_sym(",") {
                        return Err(self.fail(
                            "too many arguments to since(); it takes one event name or timestamp trait",
                        ));
                    }
                    ExprKind::Since(target)
                }
                "member_for" | "in_audience" => {
                    let key = match &self.peek().tok {
                        Tok::Str(s) if s.is_empty() => {
                            return Err(self.fail("the audience key cannot be empty"));
                        }
                        Tok::Str(s) => {
                            let s = s.clone();
                            self.bump();
                            s
                        }
                        _ => {
                            return Err(self.fail(format!(
                                "{name}() takes an audience key in quotes, like {name}(\"vip\"), found {}",
                                self.found()
                            )));
                        }
                    };
                    if self.is_sym(",") {
                        return Err(self.fail(format!(
                            "too many arguments to {name}(); it takes one audience key"
                        )));
                    }
                    if name == "member_for" {
                        ExprKind::MemberFor(key)
                    } else {
                        ExprKind::InAudience(key)
                    }
                }
                "exists" => {
                    if self.is_sym(")") {
                        return Err(
                            self.fail("exists() needs something to test, like exists(trait.email)")
                        );
                    }
                    let inner = self.parse_or()?;
                    if self.is_sym(",") {
                        return Err(self.fail("too many arguments to exists(); it takes one value"));
                    }
                    ExprKind::Exists(Box::new(inner))
                }
                _ => {
                    let all = FUNCTIONS.join(", ");
                    let msg = match closest(name, FUNCTIONS) {
                        Some(c) => format!(
                            "unknown function '{}'; did you mean '{c}'? (expected one of {all})",
                            short(name)
                        ),
                        None => {
                            format!("unknown function '{}'; expected one of {all}", short(name))
                        }
                    };
                    return Err(self.err(name_tok.span, msg));
                }
            }
        };
        let end = self.close(name_tok.span, &what, "")?;
        self.leave();
        Ok(Expr {
            kind,
            span: span(name_tok.span.start, end),
        })
    }

    fn close_after_selector(&self, open: Span, what: &str) -> SegmintError {
        let hint = if self.peek().tok == Tok::Name && !KEYWORDS.contains(&self.text(self.peek())) {
            "; to filter events write 'where' before the condition, like count(\"Product Viewed\" where category == \"shoes\")"
        } else {
            ""
        };
        self.fail(format!(
            "expected ')' to close {what} at {}, found {}{hint}",
            self.line_col(open.start),
            self.found()
        ))
    }

    fn parse_selector(&mut self, fname: &str) -> Result<Selector> {
        let t = self.peek().clone();
        let event = match &t.tok {
            Tok::Str(s) if s.is_empty() => return Err(self.fail("the event name cannot be empty")),
            Tok::Str(s) => s.clone(),
            Tok::Name if self.text(&t) == "where" => {
                return Err(self.fail(format!(
                    "'where' needs an event name before it, like {fname}(\"Product Viewed\" where category == \"shoes\")"
                )));
            }
            Tok::Sym if self.text(&t) == ")" => {
                return Err(self.fail(format!(
                    "{fname}() needs an event name, like {fname}(\"Order Completed\")"
                )));
            }
            Tok::Name => {
                return Err(self.fail(format!(
                    "expected an event name in quotes, like {fname}(\"Order Completed\"), found {}",
                    self.found()
                )));
            }
            _ => {
                return Err(self.expected(&format!(
                    "an event name in quotes, like {fname}(\"Order Completed\")"
                )))
            }
        };
        self.bump();
        let mut sp = t.span;
        let filter = if self.is_kw("where") {
            self.bump();
            let outer = self.in_where;
            self.in_where = true;
            let f = self.parse_or();
            self.in_where = outer;
            let f = f?;
            sp.end = f.span.end;
            if self.is_kw("where") {
                return Err(self.fail(
                    "an event selector takes one 'where' filter; combine conditions with 'and'",
                ));
            }
            Some(Box::new(f))
        } else {
            None
        };
        Ok(Selector {
            event,
            filter,
            span: sp,
        })
    }

    fn parse_property(&mut self, func: AggFunc) -> Result<String> {
        let name = func.name();
        let t = self.peek().clone();
        match &t.tok {
            Tok::Name if !KEYWORDS.contains(&self.text(&t)) => {
                let text = self.text(&t);
                self.check_path(&t)?;
                if text.starts_with("trait.") || text.starts_with("computed.") || text == "trait" || text == "computed" {
                    return Err(self.fail(format!(
                        "{name}() aggregates an event property, like revenue or context.channel, found '{}'; traits cannot be aggregated",
                        short(text)
                    )));
                }
                if text == "properties" || text == "context" {
                    return Err(self.fail(format!("expected a name after '{text}'")));
                }
                self.bump();
                Ok(text.strip_prefix("properties.").unwrap_or(text).to_string())
            }
            Tok::Str(s) => Err(self.fail(format!(
                "write the property name without quotes, like {name}(\"Event\", {}), found {}",
                if s.is_empty() { "revenue" } else { s.as_str() },
                self.found()
            ))),
            Tok::Duration(_) => Err(self.fail(format!(
                "{name}() needs a property before the window, like {name}(\"Order Completed\", revenue, 30d)"
            ))),
            _ => Err(self.expected("a property name like revenue")),
        }
    }

    fn parse_window(&mut self, func: AggFunc) -> Result<Window> {
        let name = func.name();
        let t = self.peek().clone();
        match &t.tok {
            Tok::Duration(ms) => {
                if *ms <= 0 {
                    return Err(self.fail(format!(
                        "a window must be longer than zero, found {}",
                        self.found()
                    )));
                }
                self.bump();
                Ok(Window::Last(*ms))
            }
            Tok::Name if self.text(&t) == "since" => {
                self.bump();
                if self.is_sym("(") {
                    let open = self.bump();
                    let sel = self.parse_selector("since")?;
                    self.close(open.span, "'('", "")?;
                    Ok(Window::SinceEvent(sel))
                } else {
                    Ok(Window::SinceEvent(self.parse_selector("since")?))
                }
            }
            Tok::Number(_) => {
                let n = self.peek_at(1);
                let unit_next = n.tok == Tok::Name && {
                    let u = self.text(n).to_ascii_lowercase();
                    MS_PER_UNIT.iter().any(|(x, _)| *x == u)
                        || matches!(u.as_str(), "days" | "day" | "hours" | "hour" | "weeks" | "week" | "min" | "minutes")
                };
                let hint = if unit_next {
                    "; write the unit right after the number, with no space"
                } else {
                    "; add a unit: ms, s, m, h, d or w"
                };
                Err(self.fail(format!(
                    "expected a duration like 30d or 2h, found {}{hint}",
                    self.found()
                )))
            }
            Tok::Name if !func.takes_property() && !KEYWORDS.contains(&self.text(&t)) => {
                Err(self.fail(format!(
                    "{name}() takes no property; expected a window like 30d or since \"Event\", found {}",
                    self.found()
                )))
            }
            _ => Err(self.expected("a window like 30d or since \"Event\"")),
        }
    }

    fn parse_since_target(&mut self) -> Result<SinceTarget> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Str(_) => Ok(SinceTarget::Event(self.parse_selector("since")?)),
            Tok::Name if self.text(&t).starts_with("trait.") => {
                self.check_path(&t)?;
                self.bump();
                Ok(SinceTarget::Trait(self.text(&t)["trait.".len()..].to_string()))
            }
            Tok::Name if self.text(&t) == "where" => Err(self.fail(
                "'where' needs an event name before it, like since(\"Order Completed\" where revenue > 100)",
            )),
            _ => Err(self.fail(format!(
                "since() takes an event name like since(\"Order Completed\") or a timestamp trait like since(trait.created_at), found {}",
                self.found()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ast::*;
    use super::super::{compile_rule, parse_rule};
    use crate::error::SegmintError;

    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;

    fn e(kind: ExprKind) -> ExprKind {
        kind
    }

    /// Strips spans so that trees can be compared structurally.
    fn shape(x: &Expr) -> String {
        match &x.kind {
            ExprKind::Literal(Literal::Number(n)) => format!("{n}"),
            ExprKind::Literal(Literal::String(s)) => format!("{s:?}"),
            ExprKind::Literal(Literal::Bool(b)) => format!("{b}"),
            ExprKind::Literal(Literal::Duration(ms)) => format!("{ms}ms"),
            ExprKind::List(items) => {
                format!(
                    "[{}]",
                    items.iter().map(shape).collect::<Vec<_>>().join(", ")
                )
            }
            ExprKind::Trait(k) => format!("trait.{k}"),
            ExprKind::Computed(k) => format!("computed.{k}"),
            ExprKind::Property(k) => format!("prop.{k}"),
            ExprKind::Aggregate {
                func,
                selector,
                property,
                window,
            } => {
                let mut s = format!("{}({}", func.name(), sel(selector));
                if let Some(p) = property {
                    s.push_str(&format!(", {p}"));
                }
                match window {
                    Window::All => {}
                    Window::Last(ms) => s.push_str(&format!(", {ms}ms")),
                    Window::SinceEvent(x) => s.push_str(&format!(", since {}", sel(x))),
                }
                s.push(')');
                s
            }
            ExprKind::Since(SinceTarget::Event(x)) => format!("since({})", sel(x)),
            ExprKind::Since(SinceTarget::Trait(k)) => format!("since(trait.{k})"),
            ExprKind::MemberFor(k) => format!("member_for({k:?})"),
            ExprKind::InAudience(k) => format!("in_audience({k:?})"),
            ExprKind::Exists(x) => format!("exists({})", shape(x)),
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => format!("(not {})", shape(expr)),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => format!("(-{})", shape(expr)),
            ExprKind::Binary { op, lhs, rhs } => {
                format!("({} {} {})", shape(lhs), op.symbol(), shape(rhs))
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => format!(
                "({} {}between {} and {})",
                shape(expr),
                if *negated { "not " } else { "" },
                shape(low),
                shape(high)
            ),
        }
    }

    fn sel(s: &Selector) -> String {
        match &s.filter {
            Some(f) => format!("{:?} where {}", s.event, shape(f)),
            None => format!("{:?}", s.event),
        }
    }

    fn p(src: &str) -> String {
        match parse_rule(src) {
            Ok(x) => shape(&x),
            Err(err) => panic!("{src:?} failed: {err}"),
        }
    }

    /// Asserts a syntax error at `line:col` whose message contains `msg`.
    #[track_caller]
    fn syntax(src: &str, line: usize, col: usize, msg: &str) {
        let shown = &src[..src.len().min(80)];
        match parse_rule(src) {
            Err(SegmintError::RuleSyntax(err)) => {
                assert!(
                    err.message.contains(msg),
                    "{shown:?}: message {:?} lacks {msg:?}",
                    err.message
                );
                assert_eq!(
                    (err.line, err.column),
                    (line, col),
                    "{shown:?}: {}",
                    err.message
                );
            }
            other => panic!("{shown:?}: expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn design_examples_parse_and_check() {
        let examples = [
            r#"trait.country == "US""#,
            r#"trait.plan in ["pro", "enterprise"]"#,
            r#"exists(trait.email)"#,
            r#"count("Order Completed", 30d) >= 3"#,
            r#"count("Product Viewed" where category == "shoes" and context.device.type == "ios", 7d) >= 2"#,
            r#"did("Added to Cart", 7d) and not did("Order Completed", 7d)"#,
            r#"sum("Order Completed", revenue, 365d) > 300"#,
            r#"avg("Order Completed", revenue) > 30 and min("Order Completed", revenue) >= 1"#,
            r#"max("Order Completed", revenue, 30d) < 1000 and distinct("Product Viewed", category) >= 3"#,
            r#"most_frequent("Product Viewed", category, 30d) == "skincare""#,
            r#"last("Order Completed", category) == "skincare""#,
            r#"first("Order Completed", category) == "skincare""#,
            r#"since("Order Completed") between 60d and 120d"#,
            r#"since(trait.created_at) < 14d"#,
            "since(\"Checkout Started\") between 2h and 24h\n    and count(\"Order Completed\", since \"Checkout Started\") == 0",
            r#"in_audience("vip") and not in_audience("recent_purchasers")"#,
            r#"member_for("cart_abandoners") >= 7d"#,
            r#"computed.ltv > 500 and sum("Order Completed", revenue) / count("Order Completed") > 50"#,
            r#"trait.country == "US" and trait.plan in ["pro","enterprise"] and count("Product Viewed" where category == "skincare", 30d) >= 3"#,
            r#"in_audience("engaged") and not in_audience("recent_purchasers")"#,
            r#"count("Order Completed") == 1 and did("Order Completed", 14d)"#,
            r#"trait.email ends_with "@gmail.com" or trait.name starts_with 'Dr' or trait.tags contains "beta""#,
            r#"trait.age not between 18 and 25 and trait.plan not in ["free"]"#,
        ];
        for src in examples {
            if let Err(err) = compile_rule(src) {
                panic!("{src:?}: {err}");
            }
        }
    }

    #[test]
    fn asts() {
        assert_eq!(p(r#"trait.country == "US""#), r#"(trait.country == "US")"#);
        assert_eq!(
            p(r#"trait.plan in ["pro", 'enterprise']"#),
            r#"(trait.plan in ["pro", "enterprise"])"#
        );
        assert_eq!(
            p(
                r#"count("Product Viewed" where category == "shoes" and context.device.type == "ios", 7d) >= 2"#
            ),
            format!(
                r#"(count("Product Viewed" where ((prop.category == "shoes") and (prop.context.device.type == "ios")), {}ms) >= 2)"#,
                7 * DAY
            )
        );
        assert_eq!(
            p(r#"sum("Order Completed", properties.revenue, 365d) > 300"#),
            format!(
                r#"(sum("Order Completed", revenue, {}ms) > 300)"#,
                365 * DAY
            )
        );
        assert_eq!(
            p(
                r#"since("Checkout Started") between 2h and 24h and count("Order Completed", since "Checkout Started") == 0"#
            ),
            format!(
                r#"((since("Checkout Started") between {}ms and {}ms) and (count("Order Completed", since "Checkout Started") == 0))"#,
                2 * HOUR,
                24 * HOUR
            )
        );
        assert_eq!(
            p(r#"count("A", since("B" where x > 1)) == 0"#),
            r#"(count("A", since "B" where (prop.x > 1)) == 0)"#
        );
        assert_eq!(
            p("since(trait.created_at) < 14d"),
            format!("(since(trait.created_at) < {}ms)", 14 * DAY)
        );
        assert_eq!(
            p(r#"member_for("a") >= 1w"#),
            format!(r#"(member_for("a") >= {}ms)"#, 7 * DAY)
        );
        assert_eq!(p("exists(trait.email)"), "exists(trait.email)");
        assert_eq!(
            p("trait.x not in [1, -2.5, true]"),
            "(trait.x not in [1, -2.5, true])"
        );
        assert_eq!(
            p("trait.x not between -1 and 3"),
            "(trait.x not between -1 and 3)"
        );
        assert_eq!(
            p(r#""a\"b\\c\n\t" == trait.s"#),
            r#"("a\"b\\c\n\t" == trait.s)"#
        );
        assert_eq!(p("trait.a == 'it\\'s'"), r#"(trait.a == "it's")"#);
        assert_eq!(p("computed.ltv > 500"), "(computed.ltv > 500)");
        assert_eq!(p("500ms < since(\"X\")"), "(500ms < since(\"X\"))");
        assert_eq!(
            p("90s == 15m"),
            format!("({}ms == {}ms)", 90_000, 15 * 60_000)
        );
        assert_eq!(p("true or false"), "(true or false)");
        assert_eq!(
            p("# leading comment\ntrait.a == 1 # trailing\n  and # mid\n  trait.b == 2"),
            "((trait.a == 1) and (trait.b == 2))"
        );
    }

    #[test]
    fn spans() {
        let src = r#"trait.a == 1 and count("X" where a == 2, 7d) > 3"#;
        let x = parse_rule(src).unwrap();
        assert_eq!(
            x.span,
            Span {
                start: 0,
                end: src.len()
            }
        );
        let ExprKind::Binary { rhs, lhs, .. } = &x.kind else {
            panic!()
        };
        assert_eq!(&src[lhs.span.start..lhs.span.end], "trait.a == 1");
        let ExprKind::Binary { lhs: agg, .. } = &rhs.kind else {
            panic!()
        };
        assert_eq!(
            &src[agg.span.start..agg.span.end],
            r#"count("X" where a == 2, 7d)"#
        );
        let ExprKind::Aggregate { selector, .. } = &agg.kind else {
            panic!()
        };
        assert_eq!(
            &src[selector.span.start..selector.span.end],
            r#""X" where a == 2"#
        );
        let y = parse_rule("(trait.a == 1)").unwrap();
        assert_eq!(y.span, Span { start: 0, end: 14 });
        let z = parse_rule("-3").unwrap();
        assert_eq!(z.kind, e(ExprKind::Literal(Literal::Number(-3.0))));
    }

    #[test]
    fn precedence() {
        assert_eq!(
            p("trait.a == 1 or trait.b == 2 and trait.c == 3"),
            "((trait.a == 1) or ((trait.b == 2) and (trait.c == 3)))"
        );
        assert_eq!(
            p("not trait.a == 1 and trait.b == 2"),
            "((not (trait.a == 1)) and (trait.b == 2))"
        );
        assert_eq!(
            p("not not in_audience(\"a\")"),
            "(not (not in_audience(\"a\")))"
        );
        assert_eq!(
            p("trait.a + 2 * 3 > 4 - 1"),
            "((trait.a + (2 * 3)) > (4 - 1))"
        );
        assert_eq!(
            p("1 - 2 - 3 == 1 / 2 / 3"),
            "(((1 - 2) - 3) == ((1 / 2) / 3))"
        );
        assert_eq!(p("-trait.a * 2 == 1"), "(((-trait.a) * 2) == 1)");
        assert_eq!(p("- - 2 == 2"), "((--2) == 2)");
        assert_eq!(
            p("(trait.a == 1 or trait.b == 2) and trait.c == 3"),
            "(((trait.a == 1) or (trait.b == 2)) and (trait.c == 3))"
        );
        assert_eq!(
            p("trait.a between 1 and 2 and trait.b == 3"),
            "((trait.a between 1 and 2) and (trait.b == 3))"
        );
        assert_eq!(
            p("trait.a between 1 + 1 and 2 * 3 or false"),
            "((trait.a between (1 + 1) and (2 * 3)) or false)"
        );
        assert_eq!(
            p("not trait.a in [1] or trait.b contains \"x\""),
            "((not (trait.a in [1])) or (trait.b contains \"x\"))"
        );
        assert_eq!(
            p(r#"count("A" where a == 1 or b == 2, 7d) > 0"#),
            format!(
                r#"(count("A" where ((prop.a == 1) or (prop.b == 2)), {}ms) > 0)"#,
                7 * DAY
            )
        );
    }

    #[test]
    fn where_paths() {
        assert_eq!(
            p(
                r#"did("E" where properties.category == "x" and context.channel == "web" and a.b == 1 and count > 2)"#
            ),
            r#"did("E" where ((((prop.category == "x") and (prop.context.channel == "web")) and (prop.a.b == 1)) and (prop.count > 2)))"#
        );
        assert_eq!(
            p(r#"did("E" where exists(coupon))"#),
            r#"did("E" where exists(prop.coupon))"#
        );
        assert_eq!(
            p(r#"sum("E", context.value)"#),
            r#"sum("E", context.value)"#
        );
    }

    #[test]
    fn malformed_rules() {
        // Empty input and stray tokens.
        syntax("", 1, 1, "empty rule");
        syntax("   # only a comment\n", 1, 1, "empty rule");
        syntax(
            r#"trait.a == 1,"#,
            1,
            13,
            "unexpected ',' after end of rule",
        );
        syntax(r#"trait.a == 1)"#, 1, 13, "unmatched ')'");
        syntax(
            r#"trait.a == 1 trait.b == 2"#,
            1,
            14,
            "did you forget 'and' or 'or'",
        );
        syntax(
            r#"trait.a == 1 AND trait.b == 2"#,
            1,
            14,
            "keywords are lowercase: write 'and'",
        );
        // Operators.
        syntax(
            r#"trait.a = 1"#,
            1,
            9,
            "expected a comparison operator (==, !=, <, <=, >, >=), found '='",
        );
        syntax(r#"trait.a <> 1"#, 1, 9, "write '!='");
        syntax(r#"trait.a => 1"#, 1, 9, "did you mean '>='?");
        syntax(r#"trait.a == 1 && trait.b == 2"#, 1, 14, "write 'and'");
        syntax(r#"trait.a == 1 || trait.b == 2"#, 1, 14, "write 'or'");
        syntax(r#"!in_audience("a")"#, 1, 1, "write 'not'");
        syntax(
            r#"trait.a =="#,
            1,
            11,
            "expected a value after '==', found end of rule",
        );
        syntax(
            r#"trait.a == and"#,
            1,
            12,
            "expected a value after '==', found 'and'",
        );
        syntax(r#"1 < trait.a < 5"#, 1, 13, "comparisons cannot be chained");
        syntax(r#"trait.a not == 1"#, 1, 9, "write 'not in', 'not between'");
        syntax(
            r#"trait.a between 1, 5"#,
            1,
            18,
            "expected 'and' between the bounds",
        );
        syntax(r#"trait.a @ 1"#, 1, 9, "unexpected character '@'");
        syntax("trait.a == 1 € 2", 1, 14, "unexpected character '€'");
        syntax(r#"trait.a == "€" and €"#, 1, 20, "unexpected character '€'");
        syntax(r#"trait.a == .5"#, 1, 12, "unexpected '.'");
        syntax(r#"trait .a == 1"#, 1, 1, "expected a name after 'trait'");
        // Names.
        syntax(r#"category == "shoes""#, 1, 1,
            "unknown name 'category'; did you mean trait.category? (bare property names are only allowed inside a where filter)");
        syntax(
            r#"properties.category == "x""#,
            1,
            1,
            "did you mean trait.category?",
        );
        syntax(r#"trait == 1"#, 1, 1, "expected a name after 'trait'");
        syntax(r#"trait.a. == 1"#, 1, 8, "expected a name after '.'");
        syntax(r#"trait.a == null"#, 1, 12, "there is no null literal");
        syntax(r#"count > 1"#, 1, 1, "expected '(' after 'count'");
        // Literals.
        syntax(r#"trait.a == "abc"#, 1, 12, "unterminated string");
        syntax("trait.a == 'abc\n and true", 1, 12, "unterminated string");
        syntax(r#"trait.a == "a\qb""#, 1, 14, "unknown escape '\\q'");
        syntax(
            r#"count("X", 30x) > 1"#,
            1,
            12,
            "expected a duration like 30d or 2h, found '30x'",
        );
        syntax(r#"since("X") > 1y"#, 1, 14, "unknown duration unit 'y'");
        syntax(r#"since("X") > 1.5d"#, 1, 14, "whole number");
        syntax(
            r#"trait.a == 3."#,
            1,
            12,
            "expected a number like 3 or 3.5, found '3.'",
        );
        syntax(r#"since("X") > 99999999999999999999d"#, 1, 14, "too large");
        // Lists.
        syntax(
            r#"trait.a in ["a" "b"]"#,
            1,
            17,
            "expected ',' or ']' to close '[' at 1:12",
        );
        syntax(
            r#"trait.a in ["a", trait.b]"#,
            1,
            18,
            "list elements must be literals",
        );
        syntax(r#"trait.a in [["a"]]"#, 1, 13, "lists cannot be nested");
        syntax(r#"trait.a in ["a""#, 1, 16, "expected ',' or ']'");
        // Parentheses and calls.
        syntax(
            r#"(trait.a == 1"#,
            1,
            14,
            "expected ')' to close '(' at 1:1, found end of rule",
        );
        syntax(
            r#"count("X" > 1"#,
            1,
            11,
            "expected ')' to close count( at 1:1, found '>'",
        );
        syntax(
            r#"cnt("X") > 1"#,
            1,
            1,
            "unknown function 'cnt'; did you mean 'count'?",
        );
        syntax(r#"COUNT("X") > 1"#, 1, 1, "did you mean 'count'?");
        syntax(
            r#"frobnicate("X")"#,
            1,
            1,
            "expected one of count, did, sum",
        );
        syntax(
            r#"count(where category == "x") > 1"#,
            1,
            7,
            "'where' needs an event name before it",
        );
        syntax(r#"count() > 1"#, 1, 7, "count() needs an event name");
        syntax(
            r#"count(Order Completed) > 1"#,
            1,
            7,
            "expected an event name in quotes",
        );
        syntax(r#"count("") > 1"#, 1, 7, "event name cannot be empty");
        syntax(
            r#"count("X" category == "y") > 1"#,
            1,
            11,
            "write 'where' before the condition",
        );
        syntax(
            r#"count("X", 30) > 1"#,
            1,
            12,
            "expected a duration like 30d or 2h, found '30'",
        );
        syntax(
            r#"count("X", 30 d) > 1"#,
            1,
            12,
            "write the unit right after the number",
        );
        syntax(
            r#"count("X", 0d) > 1"#,
            1,
            12,
            "window must be longer than zero",
        );
        syntax(
            r#"count("X", revenue) > 1"#,
            1,
            12,
            "count() takes no property",
        );
        syntax(
            r#"count("X", 7d, 2) > 1"#,
            1,
            14,
            "too many arguments to count()",
        );
        syntax(
            r#"sum("X") > 1"#,
            1,
            8,
            "sum() needs a property to aggregate",
        );
        syntax(
            r#"sum("X", 30d) > 1"#,
            1,
            10,
            "needs a property before the window",
        );
        syntax(r#"sum("X", "revenue") > 1"#, 1, 10, "without quotes");
        syntax(
            r#"sum("X", trait.ltv) > 1"#,
            1,
            10,
            "traits cannot be aggregated",
        );
        syntax(
            r#"count("X" where a == 1 where b == 2) > 1"#,
            1,
            24,
            "one 'where' filter",
        );
        syntax(
            r#"count("X" where , 7d) > 1"#,
            1,
            17,
            "expected a value after 'where'",
        );
        syntax(r#"since(Order) > 1d"#, 1, 7, "since() takes an event name");
        syntax(
            r#"since("X", 7d) > 1d"#,
            1,
            10,
            "too many arguments to since()",
        );
        syntax(
            r#"in_audience(vip)"#,
            1,
            13,
            "in_audience() takes an audience key in quotes",
        );
        syntax(r#"in_audience("")"#, 1, 13, "audience key cannot be empty");
        syntax(r#"exists()"#, 1, 8, "exists() needs something to test");
        // Multi-line rules: positions are line:column of the offending token.
        syntax(
            "trait.a == 1 and\n  count(\"X\", 7d) >= x",
            2,
            21,
            "unknown name 'x'",
        );
        syntax(
            "trait.a == 1\nand count(\"X\"\n  , 7d",
            3,
            7,
            "expected ')' to close count( at 2:5, found end of rule",
        );
        syntax("since(\"Checkout Started\") between 2h and 24h\n    and count(\"Order Completed\", since Checkout) == 0", 2, 40, "expected an event name in quotes");
        syntax(
            "# comment\n\ntrait.plan in [\"pro\",\n  \"enterprise\"\n  trait.x",
            5,
            3,
            "expected ',' or ']' to close '[' at 3:15",
        );
        syntax(
            "trait.a == \"x\"\n\t\tor trait.b === 2",
            2,
            14,
            "found '==='",
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
        syntax(&src, 1, 42, "nested too deeply");
        let ok = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(compile_rule(&ok).is_ok());
        let src = format!("{}in_audience(\"a\")", "not ".repeat(100));
        syntax(&src, 1, 165, "nested too deeply");
        let src = format!("{}1 == 1", "-".repeat(100));
        syntax(&src, 1, 42, "nested too deeply");
        let chain = vec!["trait.a == 1"; 2000].join(" or ");
        syntax(&chain, 1, 3217, "too deep");
        // The deepest accepted tree, nested as far as allowed, type-checks.
        let chain = vec!["(((trait.a == 1)))"; 150].join(" or ");
        let deep = format!("{}{chain}{}", "(".repeat(37), ")".repeat(37));
        compile_rule(&deep).unwrap();
    }

    #[test]
    fn error_display_has_caret() {
        let err = parse_rule("trait.a = 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule syntax error at 1:9: expected a comparison operator (==, !=, <, <=, >, >=), found '='; write '==' to test equality\n  trait.a = 1\n          ^"
        );
    }
}
