//! What differs between two configs, named as an operator writes it
//! (`listen`, `http.shutdown_grace_ms`, ``model group `g` deployments``):
//! a reload reports what it could not apply this way. Compared as data, so
//! a setting added later is reported without anyone remembering to.

use serde_json::{Map, Value};

use super::Config;

/// The settings of `wanted` that differ from `running`, model groups'
/// policies aside (a reload swaps those, or says why not).
pub fn differences(wanted: &Config, running: &Config) -> Vec<String> {
    let (wanted, running) = (as_object(wanted), as_object(running));
    let mut found = Vec::new();
    for key in keys(&wanted, &running) {
        let (w, r) = (wanted.get(key), running.get(key));
        if w == r {
            continue;
        }
        match (key, w, r) {
            ("model_groups", Some(Value::Array(w)), Some(Value::Array(r))) => {
                group_differences(w, r, &mut found);
            }
            (_, Some(Value::Object(w)), Some(Value::Object(r))) => {
                found.extend(
                    keys(w, r)
                        .filter(|k| w.get(*k) != r.get(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            _ => found.push(key.to_owned()),
        }
    }
    found
}

fn group_differences(wanted: &[Value], running: &[Value], found: &mut Vec<String>) {
    let name = |g: &Value| g.get("name").and_then(Value::as_str).map(str::to_owned);
    let find = |groups: &[Value], n: &str| {
        groups
            .iter()
            .find(|g| name(g).as_deref() == Some(n))
            .cloned()
    };
    for group in wanted {
        let Some(n) = name(group) else { continue };
        let Some(live) = find(running, &n) else {
            found.push(format!("model group `{n}` (new)"));
            continue;
        };
        let (w, r) = (group.as_object(), live.as_object());
        if let (Some(w), Some(r)) = (w, r) {
            found.extend(
                keys(w, r)
                    .filter(|k| *k != "policies" && w.get(*k) != r.get(*k))
                    .map(|k| format!("model group `{n}` {k}")),
            );
        }
    }
    for group in running {
        if let Some(n) = name(group) {
            if find(wanted, &n).is_none() {
                found.push(format!("model group `{n}` (removed)"));
            }
        }
    }
}

fn as_object(config: &Config) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The keys of either map, each once, in order.
fn keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> impl Iterator<Item = &'a str> {
    let mut all: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}

#[cfg(test)]
mod tests {
    use super::differences;
    use crate::config::Config;

    fn config(text: &str) -> Config {
        let base = "[[deployments]]\nid = \"a\"\nmodel_id = \"m\"\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n";
        Config::parse(&format!("{text}\n{base}"), "test").unwrap()
    }

    #[test]
    fn names_each_changed_setting_by_its_key() {
        let running = config("listen = \"127.0.0.1:4000\"");
        let wanted = config("listen = \"127.0.0.1:4001\"\n[http]\nshutdown_grace_ms = 1234");
        assert_eq!(
            differences(&wanted, &running),
            vec!["http.shutdown_grace_ms".to_owned(), "listen".to_owned()]
        );
        assert!(differences(&running, &running).is_empty());
    }

    #[test]
    fn names_model_groups_and_leaves_their_policies_to_the_swapper() {
        let running = config("");
        let mut wanted = running.clone();
        wanted.model_groups[0].aliases = vec!["other".into()];
        wanted.model_groups[0].policies.selection.name = Some("round-robin".into());
        let mut new = wanted.model_groups[0].clone();
        new.name = "h".into();
        wanted.model_groups.push(new);
        assert_eq!(
            differences(&wanted, &running),
            vec![
                "model group `g` aliases".to_owned(),
                "model group `h` (new)".to_owned()
            ]
        );
        assert_eq!(
            differences(&running, &wanted),
            vec![
                "model group `g` aliases".to_owned(),
                "model group `h` (removed)".to_owned()
            ]
        );
    }
}
