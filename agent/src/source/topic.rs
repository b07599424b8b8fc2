//! MQTT topic patterns that bind tags: `sensors/+site/+device/#field`.
//!
//! A pattern is an MQTT topic filter whose wildcards may carry a name:
//!
//! - `+name` matches one level and binds tag `name` to it; `#name` matches the
//!   remaining levels (possibly none) and binds `name` to them joined by `.`.
//! - The names `field` and `measurement` bind the point's field name and
//!   measurement instead of a tag (`#field` on `a/b/temp` gives field `a.b.temp`
//!   with the levels after the fixed part).
//! - Plain `+` and `#` match as usual and bind nothing.
//!
//! The broker is subscribed to the plain filter (`sensors/+/+/#`).

/// One level of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+` or `+name`.
    One(Option<String>),
    /// `#` or `#name`; always last.
    Rest(Option<String>),
}

/// A parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

/// What a topic bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound<'t> {
    /// Tags, in pattern order (on the stack: bound for every message).
    pub tags: smallvec::SmallVec<[(&'t str, std::borrow::Cow<'t, str>); 4]>,
    /// The field name, if the pattern binds `field`.
    pub field: Option<std::borrow::Cow<'t, str>>,
    /// The measurement, if the pattern binds `measurement`.
    pub measurement: Option<std::borrow::Cow<'t, str>>,
}

impl TopicPattern {
    /// Parses a pattern; the error says what is wrong.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        if pattern.is_empty() {
            return Err("is empty".into());
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let name = |rest: &str| (!rest.is_empty()).then(|| rest.to_string());
            let level = if let Some(rest) = p.strip_prefix('+') {
                Level::One(name(rest))
            } else if let Some(rest) = p.strip_prefix('#') {
                if i + 1 != parts.len() {
                    return Err(format!("`{p}` must be the last level"));
                }
                Level::Rest(name(rest))
            } else {
                if p.contains(['+', '#']) {
                    return Err(format!(
                        "level `{p}`: `+` and `#` may only start a level (`+name`, `#name`)"
                    ));
                }
                Level::Exact(p.to_string())
            };
            if let Level::One(Some(n)) | Level::Rest(Some(n)) = &level {
                if n.contains(['+', '#']) {
                    return Err(format!("level `{p}`: a name cannot contain `+` or `#`"));
                }
            }
            levels.push(level);
        }
        let mut seen = std::collections::HashSet::new();
        for l in &levels {
            if let Level::One(Some(n)) | Level::Rest(Some(n)) = l {
                if !seen.insert(n.as_str()) {
                    return Err(format!("`{n}` is bound twice"));
                }
            }
        }
        Ok(TopicPattern { levels })
    }

    /// The MQTT filter to subscribe to: the pattern without names.
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Exact(s) => s.as_str(),
                Level::One(_) => "+",
                Level::Rest(_) => "#",
            })
            .collect();
        parts.join("/")
    }

    /// Whether the pattern binds the field name from the topic.
    pub fn binds_field(&self) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::One(Some(n)) | Level::Rest(Some(n)) if n == "field"))
    }

    /// Matches `topic` (MQTT rules: `#` also matches the parent level, and
    /// wildcards at the first level do not match `$` topics); `None` if it
    /// does not match.
    pub fn bind<'t>(&'t self, topic: &'t str) -> Option<Bound<'t>> {
        use std::borrow::Cow;
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return None;
        }
        let mut out = Bound::default();
        let mut bind = |name: &'t Option<String>, value: Cow<'t, str>| match name.as_deref() {
            None => {}
            Some("field") => out.field = Some(value),
            Some("measurement") => out.measurement = Some(value),
            Some(n) => out.tags.push((n, value)),
        };
        let mut parts = topic.split('/');
        let mut consumed = 0usize;
        for level in &self.levels {
            match level {
                Level::Rest(name) => {
                    let rest = topic.get(consumed..).unwrap_or("");
                    let rest = rest.strip_prefix('/').unwrap_or(rest);
                    let value = if rest.contains('/') {
                        Cow::Owned(rest.replace('/', "."))
                    } else {
                        Cow::Borrowed(rest)
                    };
                    bind(name, value);
                    return Some(out);
                }
                Level::Exact(s) => {
                    if parts.next()? != s {
                        return None;
                    }
                    consumed += s.len() + 1;
                }
                Level::One(name) => {
                    let p = parts.next()?;
                    consumed += p.len() + 1;
                    bind(name, Cow::Borrowed(p));
                }
            }
        }
        parts.next().is_none().then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags<'a>(b: &'a Bound<'_>) -> Vec<(&'a str, &'a str)> {
        b.tags.iter().map(|(k, v)| (*k, v.as_ref())).collect()
    }

    #[test]
    fn binds_tags_and_field() {
        let p = TopicPattern::parse("sensors/+site/+device/#field").unwrap();
        assert_eq!(p.filter(), "sensors/+/+/#");
        assert!(p.binds_field());
        let b = p.bind("sensors/lab/d01/temp").unwrap();
        assert_eq!(tags(&b), [("site", "lab"), ("device", "d01")]);
        assert_eq!(b.field.as_deref(), Some("temp"));
        let b = p.bind("sensors/lab/d01/env/temp").unwrap();
        assert_eq!(b.field.as_deref(), Some("env.temp"));
        // `#` also matches the parent level: an empty field.
        let b = p.bind("sensors/lab/d01").unwrap();
        assert_eq!(b.field.as_deref(), Some(""));
        assert!(p.bind("sensors/lab").is_none());
        assert!(p.bind("other/lab/d01/temp").is_none());
    }

    #[test]
    fn plain_wildcards_and_exact_levels() {
        let p = TopicPattern::parse("a/+/c").unwrap();
        assert_eq!(p.filter(), "a/+/c");
        assert!(p.bind("a/x/c").unwrap().tags.is_empty());
        assert!(p.bind("a/x/c/d").is_none());
        assert!(p.bind("a/x").is_none());
        let p = TopicPattern::parse("#").unwrap();
        assert!(p.bind("x/y").is_some());
        assert!(p.bind("$SYS/x").is_none());
        let p = TopicPattern::parse("+measurement/+room").unwrap();
        let b = p.bind("env/kitchen").unwrap();
        assert_eq!(b.measurement.as_deref(), Some("env"));
        assert_eq!(tags(&b), [("room", "kitchen")]);
        // Empty levels bind empty values (the source rejects empty tags).
        let b = p.bind("env/").unwrap();
        assert_eq!(tags(&b), [("room", "")]);
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(TopicPattern::parse("a/#x/b").is_err());
        assert!(TopicPattern::parse("a/b+c").is_err());
        assert!(TopicPattern::parse("+x/+x").is_err());
        assert!(TopicPattern::parse("").is_err());
    }
}
