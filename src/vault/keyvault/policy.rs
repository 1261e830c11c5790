//! Key rotation policies: their durations, their validation, and the reconciler's
//! pass that carries them out.

use super::super::audit::Caller;
use super::super::kid::key_url;
use super::super::{now_secs, VaultError, MAX_TIME};
use super::{write_json, KeyOptions, KeyVault, DAY, KEY_FILE};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Key Vault's key rotation policy: `lifetimeActions` and the expiry of new versions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationPolicy {
    pub lifetime_actions: Vec<LifetimeAction>,
    #[serde(default)]
    pub attributes: PolicyAttributes,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyAttributes {
    /// ISO 8601 duration: new versions expire this long after they are created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifetimeAction {
    pub trigger: Trigger,
    pub action: Action,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_after_create: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_before_expiry: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Parses an ISO 8601 duration (`P90D`, `PT10S`, `P1Y2M`; a year is 365 days and a
/// month 30, as Key Vault counts them) or a plain one (`90d`, `10s`).
/// Durations that, counted from now, reach past 9999-12-31T23:59:59Z are refused.
pub fn parse_duration(s: &str) -> Result<i64, VaultError> {
    parse_duration_raw(s).and_then(|d| check_duration(s, d))
}

/// A stored duration, for the reconciler: no range check (callers saturate).
fn parse_duration_lenient(s: &str) -> Option<i64> {
    parse_duration_raw(s).ok()
}

fn parse_duration_raw(s: &str) -> Result<i64, VaultError> {
    let bad = || {
        VaultError::InvalidArgument(format!(
            "invalid duration '{s}'; use ISO 8601 like P90D or PT30S"
        ))
    };
    let t = s.trim();
    let Some(rest) = t.strip_prefix('P').or_else(|| t.strip_prefix('p')) else {
        let d = humantime::parse_duration(t).map_err(|_| bad())?;
        return Ok(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    };
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: i64 = 0;
    let mut seen = false;
    let mut add = |part: &str, units: &[(char, i64)]| -> Result<(), VaultError> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let mult = units
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(&c))
                .ok_or_else(bad)?
                .1;
            let n: i64 = num.parse().map_err(|_| bad())?;
            total = total
                .checked_add(n.checked_mul(mult).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            num.clear();
            seen = true;
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(bad())
        }
    };
    add(
        date,
        &[
            ('Y', 365 * DAY),
            ('M', 30 * DAY),
            ('W', 7 * DAY),
            ('D', DAY),
        ],
    )?;
    if let Some(time) = time {
        add(time, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    if !seen {
        return Err(bad());
    }
    Ok(total)
}

/// Refuses a duration that, counted from now, reaches past 9999-12-31T23:59:59Z: it
/// could never fire, and the times derived from it could not be shown.
fn check_duration(s: &str, secs: i64) -> Result<i64, VaultError> {
    match now_secs().checked_add(secs) {
        Some(t) if t <= MAX_TIME => Ok(secs),
        _ => Err(VaultError::InvalidArgument(format!(
            "duration '{}' is too long: counted from now it reaches past 9999-12-31T23:59:59Z",
            s.trim().chars().take(60).collect::<String>()
        ))),
    }
}

/// The shortest `timeAfterCreate` and `expiryTime` a rotation policy takes, and the
/// youngest a key's current version may be for a policy to rotate it: without a
/// floor, `PT0S` rotates a key on every reconciler pass (a new RSA key, an audit
/// record and a re-wrap of every disk of auto-rotating sets, several times a second).
/// Key Vault's floor is 7 days; this one is short so that tests can use seconds.
pub const MIN_POLICY_SECS: i64 = 10;

fn too_short(field: &str, d: &str, why: &str) -> VaultError {
    VaultError::InvalidArgument(format!(
        "{field} '{}' is too short: it must be at least PT{MIN_POLICY_SECS}S ({MIN_POLICY_SECS} seconds){why}",
        d.trim().chars().take(60).collect::<String>()
    ))
}

impl RotationPolicy {
    pub fn validate(&self) -> Result<(), VaultError> {
        let bad = |m: &str| Err(VaultError::InvalidArgument(m.to_string()));
        let expiry = match &self.attributes.expiry_time {
            Some(e) => {
                let secs = parse_duration(e)?;
                if secs < MIN_POLICY_SECS {
                    return Err(too_short(
                        "expiryTime",
                        e,
                        ", or new versions would expire as they are made",
                    ));
                }
                Some(secs)
            }
            None => None,
        };
        for a in &self.lifetime_actions {
            match (&a.trigger.time_after_create, &a.trigger.time_before_expiry) {
                (Some(d), None) => {
                    if parse_duration(d)? < MIN_POLICY_SECS {
                        return Err(too_short(
                            "timeAfterCreate",
                            d,
                            ", or the key would rotate without pause",
                        ));
                    }
                }
                (None, Some(d)) => {
                    let before = parse_duration(d)?;
                    if let (Some(e), "Rotate") = (expiry, a.action.kind.as_str()) {
                        if e.saturating_sub(before) < MIN_POLICY_SECS {
                            return Err(VaultError::InvalidArgument(format!(
                                "timeBeforeExpiry '{}' leaves less than PT{MIN_POLICY_SECS}S between a new version's creation and its rotation (expiryTime '{}'); make expiryTime longer or timeBeforeExpiry shorter, or the key would rotate without pause",
                                d.trim().chars().take(60).collect::<String>(),
                                self.attributes.expiry_time.as_deref().unwrap_or_default().trim().chars().take(60).collect::<String>()
                            )));
                        }
                    }
                }
                _ => return bad("each lifetime action needs exactly one trigger: timeAfterCreate or timeBeforeExpiry"),
            }
            match a.action.kind.as_str() {
                "Rotate" => {}
                "Notify" if a.trigger.time_before_expiry.is_some() => {}
                "Notify" => return bad("a Notify action needs a timeBeforeExpiry trigger"),
                other => {
                    return Err(VaultError::InvalidArgument(format!(
                        "unknown action type '{other}'; use Rotate or Notify"
                    )))
                }
            }
        }
        Ok(())
    }
}

impl KeyVault {
    /// Sets (or with `None` clears) a key's rotation policy.
    pub fn set_rotation_policy(
        &self,
        caller: &Caller,
        name: &str,
        policy: Option<RotationPolicy>,
    ) -> Result<(), VaultError> {
        self.audited(
            "KeyRotationPolicySet",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                if let Some(p) = &policy {
                    p.validate()?;
                }
                let mut rec = Self::entry(st, name)?.rec.clone();
                rec.rotation_policy = policy;
                rec.attributes.updated = now_secs();
                self.save_record(st, rec)?;
                Ok(())
            },
        )
    }

    /// Carries out due rotation-policy actions: rotations, and near-expiry notices
    /// (logged once per version). Called by the daemon's reconciler.
    pub fn run_policies(&self) {
        self.live.store(true, Ordering::Release);
        let now = now_secs();
        let mut rotate = Vec::new();
        {
            let mut st = self.state.lock();
            let mut notices = Vec::new();
            for (l, e) in st.keys.iter() {
                let Some(p) = &e.rec.rotation_policy else {
                    continue;
                };
                let cur = e.current();
                // A second guard against rotation storms: a stored policy (or a key
                // version with a past expiry) never rotates a version younger than
                // the floor.
                let young = now.saturating_sub(cur.attributes.created) < MIN_POLICY_SECS;
                for a in &p.lifetime_actions {
                    let due = match (&a.trigger.time_after_create, &a.trigger.time_before_expiry) {
                        // Saturating: a stored policy may hold a duration that today's
                        // parser refuses; it must not panic the reconciler.
                        (Some(d), _) => parse_duration_lenient(d)
                            .is_some_and(|d| now >= cur.attributes.created.saturating_add(d)),
                        (_, Some(d)) => cur.attributes.exp.is_some_and(|x| {
                            parse_duration_lenient(d).is_some_and(|d| now >= x.saturating_sub(d))
                        }),
                        _ => false,
                    };
                    if !due {
                        continue;
                    }
                    if a.action.kind == "Rotate" {
                        if young {
                            continue;
                        }
                        let exp = p
                            .attributes
                            .expiry_time
                            .as_deref()
                            .and_then(parse_duration_lenient)
                            .map(|x| now.saturating_add(x).min(MAX_TIME));
                        rotate.push((e.rec.name.clone(), exp));
                        break;
                    } else if !cur.near_expiry_notified {
                        notices.push((l.clone(), cur.version.clone()));
                    }
                }
            }
            let policy = Caller::policy();
            for (l, v) in notices {
                let mut rec = st.keys[&l].rec.clone();
                if let Some(x) = rec.versions.iter_mut().find(|x| x.version == v) {
                    x.near_expiry_notified = true;
                }
                if let Err(e) = write_json(&self.key_dir(&l).join(KEY_FILE), &rec) {
                    log::error!("cannot record a near-expiry notice: {e}");
                    continue;
                }
                let kid = key_url(&st.props.name, &rec.name, Some(&v));
                st.keys.get_mut(&l).expect("present").rec = rec;
                if let Err(e) = st.audit.append(
                    "KeyNearExpiryEventGridNotification",
                    &policy,
                    &kid,
                    Some(("OK", "the key version is near its expiry")),
                ) {
                    log::error!("cannot append to the audit log: {e}");
                }
            }
        }
        const RETRY: std::time::Duration = std::time::Duration::from_secs(30);
        for (name, exp) in rotate {
            let failed = self.policy_failures.lock().get(&name).copied();
            if failed.is_some_and(|t| t.elapsed() < RETRY) {
                continue;
            }
            let opts = KeyOptions {
                exp,
                ..Default::default()
            };
            match self.rotate_key(&Caller::policy(), &name, &opts) {
                Ok(_) => {
                    self.policy_failures.lock().remove(&name);
                    log::info!("rotation policy rotated key '{name}'");
                }
                Err(e) => {
                    self.policy_failures
                        .lock()
                        .insert(name.clone(), std::time::Instant::now());
                    log::error!(
                        "rotation policy could not rotate key '{name}': {e}; retrying in {} s",
                        RETRY.as_secs()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{r, set_enabled, vault};
    use super::super::{write_json, KeyRecord, KeyUpdate, KEYS_DIR};
    use super::*;
    use std::fs;

    #[test]
    fn durations_past_year_9999_are_refused() {
        assert_eq!(parse_duration("P90D").unwrap(), 90 * DAY);
        assert_eq!(parse_duration("PT10S").unwrap(), 10);
        for bad in [
            "P3000000D",
            "P106751991167300D",
            "P99999999999999999999D",
            "3000000d",
            "P10000Y",
            "",
            "P",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(VaultError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let policy = |j: &str| {
            serde_json::from_str::<RotationPolicy>(j)
                .unwrap()
                .validate()
        };
        assert!(
            policy(r#"{"lifetimeActions":[],"attributes":{"expiryTime":"P3000000D"}}"#).is_err()
        );
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P3000000D"},"action":{"type":"Rotate"}}]}"#).is_err());
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"P3000000D"},"action":{"type":"Notify"}}]}"#).is_err());
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P1Y"}}"#).is_ok());
        // Duplicate members are refused by the derived deserializer.
        assert!(serde_json::from_str::<RotationPolicy>(
            r#"{"lifetimeActions":[],"lifetimeActions":[]}"#
        )
        .is_err());
    }

    #[test]
    fn huge_stored_times_and_durations_do_not_panic() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        // Refused through the API ...
        let far = KeyUpdate {
            exp: Some(Some(i64::MAX)),
            ..Default::default()
        };
        assert!(matches!(
            v.update_key(&me, &r("k1"), &far),
            Err(VaultError::InvalidArgument(_))
        ));
        // ... but a store that already holds such values still opens, shows and runs
        // its policies.
        let kd = v.dir().join(KEYS_DIR).join("k1");
        let mut rec: KeyRecord =
            serde_json::from_slice(&fs::read(kd.join(KEY_FILE)).unwrap()).unwrap();
        rec.attributes.exp = Some(i64::MAX);
        rec.attributes.nbf = Some(i64::MIN);
        rec.versions[0].attributes.created = i64::MIN;
        rec.rotation_policy = Some(RotationPolicy {
            lifetime_actions: vec![
                LifetimeAction {
                    trigger: Trigger {
                        time_after_create: Some("P106751991167300D".into()),
                        time_before_expiry: None,
                    },
                    action: Action {
                        kind: "Rotate".into(),
                    },
                },
                LifetimeAction {
                    trigger: Trigger {
                        time_after_create: None,
                        time_before_expiry: Some("P3000000D".into()),
                    },
                    action: Action {
                        kind: "Notify".into(),
                    },
                },
            ],
            attributes: PolicyAttributes {
                expiry_time: Some("P3000000D".into()),
            },
        });
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let dir = v.dir().to_path_buf();
        drop(v);
        let v = KeyVault::open(&dir).unwrap();
        let j = v.get_key(&me, &r("k1")).unwrap();
        assert_eq!(j["keyAttributes"]["expires"], "9999-12-31T23:59:59Z");
        set_enabled(&v, &r("k1"), false);
        v.run_policies();
        assert!(v.version_age(&v.resolve(&r("k1")).unwrap()).is_some());
    }

    #[test]
    fn rotation_policies_have_a_floor() {
        let policy = |j: &str| {
            serde_json::from_str::<RotationPolicy>(j)
                .unwrap()
                .validate()
        };
        let rotate_after = |d: &str| {
            format!(
                r#"{{"lifetimeActions":[{{"trigger":{{"timeAfterCreate":"{d}"}},"action":{{"type":"Rotate"}}}}]}}"#
            )
        };
        for bad in ["PT0S", "PT9S", "0s", "P0D"] {
            let e = policy(&rotate_after(bad)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{bad}");
            assert!(e.to_string().contains("at least PT10S"), "{e}");
        }
        assert!(policy(&rotate_after("PT10S")).is_ok());
        let expiring = |before: &str, exp: &str| {
            format!(
                r#"{{"lifetimeActions":[{{"trigger":{{"timeBeforeExpiry":"{before}"}},"action":{{"type":"Rotate"}}}}],"attributes":{{"expiryTime":"{exp}"}}}}"#
            )
        };
        for (before, exp) in [
            ("PT0S", "PT0S"),
            ("PT0S", "PT9S"),
            ("PT10S", "PT15S"),
            ("P30D", "P30D"),
            ("P31D", "P30D"),
        ] {
            let e = policy(&expiring(before, exp)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{before} {exp}");
        }
        assert!(policy(&expiring("PT0S", "PT10S")).is_ok());
        assert!(policy(&expiring("P30D", "P1Y")).is_ok());
        // A Notify before expiry rotates nothing: any lead time will do.
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"P1Y"},"action":{"type":"Notify"}}],"attributes":{"expiryTime":"P30D"}}"#).is_ok());

        // A stored policy below the floor (from before it existed) never rotates a
        // version younger than the floor.
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        let kd = v.dir().join(KEYS_DIR).join("k1");
        let mut rec: KeyRecord =
            serde_json::from_slice(&fs::read(kd.join(KEY_FILE)).unwrap()).unwrap();
        rec.rotation_policy = Some(serde_json::from_str(&rotate_after("PT0S")).unwrap());
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let dir = v.dir().to_path_buf();
        drop(v);
        let v = KeyVault::open(&dir).unwrap();
        for _ in 0..3 {
            v.run_policies();
        }
        assert_eq!(v.version_ids("k1").unwrap().len(), 1);
        // An old version is rotated once; the new one is young.
        drop(v);
        rec.versions[0].attributes.created -= MIN_POLICY_SECS;
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let v = KeyVault::open(&dir).unwrap();
        for _ in 0..3 {
            v.run_policies();
        }
        assert_eq!(v.version_ids("k1").unwrap().len(), 2);
    }
}
