//! Chat templates rendered the way Hugging Face transformers renders them.
//!
//! transformers compiles `chat_template` with Jinja2 (`trim_blocks`, `lstrip_blocks`), adds the
//! globals `raise_exception` and `strftime_now` and its own `tojson` filter (Python's
//! `json.dumps` with `ensure_ascii=False`), and passes `messages`, `tools`, `documents`,
//! `add_generation_prompt` and the special tokens. We do the same with minijinja plus its
//! Python-compatibility methods (`.startswith`, `.split`, `.items`, ...), so that prompts are
//! byte-identical to what the model saw in training.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use super::TokenizerError;

/// Name under which the template is registered in its environment.
const NAME: &str = "chat_template";
/// Marks errors raised by the template itself, so they can be told apart from render bugs.
const RAISED: &str = "raise_exception: ";

/// A compiled chat template. Cheap to render many times; `Send + Sync`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names the file it came from, for error messages.
    pub fn new(source: &str, origin: &str) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TokenizerError::TemplateSyntax {
                file: origin.to_string(),
                message: format!("{e:#}"),
            })?;
        Ok(Self { env })
    }

    /// Renders the template with the given context (a map of template variables).
    pub fn render(&self, ctx: Value) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TokenizerError::TemplateRender(format!("{e:#}")))?;
        template.render(ctx).map_err(classify)
    }
}

/// Turns a minijinja error into `TemplateRaised` when the template raised it on purpose.
fn classify(err: Error) -> TokenizerError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(detail) = e
            .downcast_ref::<Error>()
            .and_then(Error::detail)
            .and_then(|d| d.strip_prefix(RAISED))
        {
            return TokenizerError::TemplateRaised(detail.to_string());
        }
        cur = e.source();
    }
    TokenizerError::TemplateRender(format!("{err:#}"))
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `strftime_now(format)`: the current date (UTC) in a `strftime` format; Llama templates
/// put today's date in the system prompt.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Formats a Unix time (UTC) with the common `strftime` directives; others pass through.
pub(crate) fn strftime(format: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month_name = MONTHS[(month - 1) as usize];
        let day_name = DAYS[weekday];
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year % 100),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{day_name}"),
            Some('a') => write!(out, "{}", &day_name[..3]),
            Some('H') => write!(out, "{:02}", rem / 3600),
            Some('M') => write!(out, "{:02}", rem / 60 % 60),
            Some('S') => write!(out, "{:02}", rem % 60),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Options of Python's `json.dumps` that templates pass to `tojson`.
struct DumpOptions {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`. Unlike minijinja's built-in it uses Python's separators (`", "`, `": "`)
/// and does not HTML-escape, which matters because the output becomes prompt tokens.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = DumpOptions {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    dump(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

/// Writes `v` as JSON, walking minijinja's value directly so that maps keep their order
/// (Python dicts do, and tool schemas are rendered in the order the client sent them).
fn dump(out: &mut String, v: &Value, o: &DumpOptions, depth: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                let x = f64::try_from(v.clone())?;
                match serde_json::Number::from_f64(x) {
                    Some(n) => out.push_str(&n.to_string()),
                    // Python writes NaN and Infinity as bare words.
                    None if x.is_nan() => out.push_str("NaN"),
                    None if x > 0.0 => out.push_str("Infinity"),
                    None => out.push_str("-Infinity"),
                }
            }
        }
        ValueKind::String => dump_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, o, i == 0, depth + 1);
                dump(out, item, o, depth + 1)?;
            }
            close(out, o, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                separator(out, o, i == 0, depth + 1);
                match key.as_str() {
                    Some(k) => dump_str(out, k, o.ensure_ascii),
                    None => dump_str(out, &key.to_string(), o.ensure_ascii),
                }
                out.push_str(&o.key_sep);
                dump(out, &v.get_item(key)?, o, depth + 1)?;
            }
            close(out, o, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

fn separator(out: &mut String, o: &DumpOptions, first: bool, depth: usize) {
    if !first {
        out.push_str(&o.item_sep);
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
}

fn close(out: &mut String, o: &DumpOptions, depth: usize) {
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
}

/// A JSON string as Python writes it: `\n`-style escapes for the usual controls, `\u00XX` for
/// the others, and (with `ensure_ascii`) `\uXXXX` surrogate pairs for everything non-ASCII.
fn dump_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn render(src: &str, ctx: Value) -> Result<String, TokenizerError> {
        ChatTemplate::new(src, "test").unwrap().render(ctx)
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let ctx = context! { x => serde_json::json!({"b": [1, 2.5, null, true], "a": "é\"<>\n"}) };
        // serde_json without preserve_order sorts keys, so "a" comes first either way.
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()).unwrap(),
            r#"{"a": "é\"<>\n", "b": [1, 2.5, null, true]}"#
        );
        assert_eq!(
            render("{{ x | tojson(indent=2) }}", ctx.clone()).unwrap(),
            "{\n  \"a\": \"é\\\"<>\\n\",\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
        );
        assert_eq!(
            render("{{ x.a | tojson(ensure_ascii=true) }}", ctx).unwrap(),
            r#""\u00e9\"<>\n""#
        );
    }

    #[test]
    fn raise_exception_is_its_own_error() {
        let err = render(
            "{% if messages %}{{ raise_exception('roles must alternate') }}{% endif %}",
            context! { messages => vec![1] },
        )
        .unwrap_err();
        assert!(
            matches!(&err, TokenizerError::TemplateRaised(m) if m == "roles must alternate"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let err = ChatTemplate::new("{% if %}", "tokenizer_config.json").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("tokenizer_config.json: chat_template does not compile"));
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {{ m }}\n{% endfor %}\n";
        assert_eq!(
            render(src, context! { messages => vec!["a", "b"] }).unwrap(),
            "    a\n    b\n"
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e %H:%M:%S %% %q", t),
            "Friday July 26 12:34:56 % %q"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
