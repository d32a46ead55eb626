//! LimitRange arithmetic, as Kubernetes' LimitRanger applies it, for what Keel runs: the
//! defaults a namespace's LimitRanges give a VirtualMachine (`cpu`, `memory`), each of its
//! disks (`storage`: a blank disk's size) and a Bucket (`storage`: its byte quota), and the
//! bounds (`min`, `max`) those values must keep.
//!
//! Admission runs [`Limits::fill_defaults`] before validation (so that a VM may leave out
//! `cpu` and `memory` where a LimitRange gives them) and [`Limits::check`] after it. On an
//! update only what the write sets, changes or removes is defaulted and judged: a value left
//! as stored stays, so that an object made before a LimitRange (or before one was tightened)
//! keeps working, while no write raises a value past a bound, or drops a bounded one,
//! unrefused.
//!
//! Amounts: `cpu` in millicores (Kubernetes' unit; a VM has whole CPUs, so a LimitRange's
//! `cpu` must be whole: `2` or `2000m`), `memory` and `storage` in bytes.

use std::fmt;

use serde_json::{Map, Value, json};

use crate::kinds::core::LimitType;
use crate::quantity::{BYTES_RULE, parse_quantity, quantity_of};
use crate::registry::{KEEL_GROUP, Kind};

/// The LimitRanges of a namespace, as they apply to a write.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Every item of every LimitRange, the LimitRanges in name order.
    items: Vec<Item>,
}

/// A value a write would put outside a LimitRange's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The LimitRange's name.
    pub limit_range: String,
    /// The field (`spec.cpu`, `spec.disks[1].size`).
    pub field: String,
    /// What is wrong, in Kubernetes' words: `maximum cpu per VirtualMachine is 2, but
    /// spec.cpu is 4`.
    pub message: String,
}

/// One item of a LimitRange.
#[derive(Debug, Clone)]
struct Item {
    limit_range: String,
    type_: LimitType,
    /// `default`, completed by `defaultRequest` (the same for these types).
    default: Map<String, Value>,
    min: Map<String, Value>,
    max: Map<String, Value>,
}

/// One value of an object that a LimitRange may default and bound.
#[derive(Debug, Clone)]
struct Slot {
    type_: LimitType,
    resource: &'static str,
    /// Where it is, as errors name it (`spec.disks[0].size`).
    field: String,
    /// The same as steps from the object's root.
    path: Vec<Step>,
    value: Option<Value>,
    /// Whether the write sets, changes or removes it (always, on a create).
    changed: bool,
    /// Whether a default may fill it in when it is left out.
    defaultable: bool,
    absent: Absent,
}

/// One step of a path into an object.
#[derive(Debug, Clone, Copy)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// What leaving a value out means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// The schema requires it (it reports the gap itself).
    Required,
    /// No limit at all (a Bucket without `quota.bytes`).
    Unbounded,
    /// As large as the disk's image, which only the node learns.
    ImageSize,
}

/// Whether LimitRanges bound objects of `kind`.
pub fn applies_to(kind: &Kind) -> bool {
    kind.group == KEEL_GROUP && matches!(kind.kind, "VirtualMachine" | "Bucket")
}

/// An amount a LimitRange names: `cpu` in millicores (whole CPUs only), `memory` and `storage`
/// in bytes; else why it is not one. A value that is neither a string nor an unsigned integer
/// is refused too (the schema reports its type).
pub fn parse_amount(type_: LimitType, resource: &str, value: &Value) -> Result<u128, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return Err("must be a quantity (2, 2000m, 512Mi, 10Gi)".into()),
    };
    if resource != "cpu" {
        return parse_quantity(&text).ok_or_else(|| BYTES_RULE.into());
    }
    let millis = cpu_millis(&text).ok_or("must be a number of CPUs: 2, or 2000m")?;
    if !millis.is_multiple_of(1000) {
        return Err(format!(
            "a {} has whole virtual CPUs: write 1, 2, 1000m, 2000m",
            type_.name()
        ));
    }
    Ok(millis)
}

/// A quantity of CPUs in millicores: `500m`, `2`, `1.5`, `2k`.
fn cpu_millis(text: &str) -> Option<u128> {
    if let Some(milli) = text.strip_suffix('m') {
        return milli
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| milli.parse().ok())?;
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // A thousandth of a CPU is the unit: `1.5` is `1.5k` millicores.
        return parse_quantity(&format!("{text}k"));
    }
    parse_quantity(text)?.checked_mul(1000)
}

/// A value as written, for messages: a string as is, a number as digits.
pub(crate) fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// === impl Limits ===

impl Limits {
    /// The limits of `ranges` (LimitRange objects of one namespace, in any order). Items Keel
    /// does not limit are passed over (validation refused them when they were written).
    pub fn new(ranges: &[Value]) -> Self {
        let mut ranges: Vec<&Value> = ranges.iter().collect();
        ranges.sort_by_key(|r| r["metadata"]["name"].as_str().unwrap_or_default());
        let mut items = Vec::new();
        for range in ranges {
            let name = range["metadata"]["name"].as_str().unwrap_or_default();
            for item in range["spec"]["limits"].as_array().into_iter().flatten() {
                let Some(type_) = item["type"].as_str().and_then(LimitType::from_name) else {
                    continue;
                };
                let map = |field: &str| item[field].as_object().cloned().unwrap_or_default();
                let mut default = map("default");
                for (resource, value) in map("defaultRequest") {
                    default.entry(resource).or_insert(value);
                }
                items.push(Item {
                    limit_range: name.to_string(),
                    type_,
                    default,
                    min: map("min"),
                    max: map("max"),
                });
            }
        }
        Self { items }
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Fills in what `object` (of `kind`, replacing `old` on an update) leaves out and a
    /// LimitRange has a default for: a VM's `spec.cpu` and `spec.memory`, a blank disk's
    /// `size`, a Bucket's `spec.quota.bytes`. The first LimitRange by name with a default
    /// gives it. On an update, a value the stored object lacks too is left out (a Bucket made
    /// without a byte quota keeps none until a write sets one).
    pub fn fill_defaults(&self, kind: &Kind, old: Option<&Value>, object: &mut Value) {
        if self.is_empty() {
            return;
        }
        for slot in slots(kind, old, object) {
            if slot.value.is_some() || !slot.changed || !slot.defaultable {
                continue;
            }
            let Some(default) = self
                .items
                .iter()
                .filter(|i| i.type_ == slot.type_)
                .find_map(|i| i.default.get(slot.resource))
            else {
                continue;
            };
            let value = match slot.resource {
                // A VM's CPUs are a whole number (validation made the default one).
                "cpu" => match parse_amount(slot.type_, "cpu", default) {
                    Ok(millis) => json!(millis / 1000),
                    Err(_) => continue,
                },
                _ => default.clone(),
            };
            slot.set(object, value);
        }
    }

    /// Every value `object` (of `kind`, replacing `old` on an update) sets or changes that lies
    /// outside a LimitRange's `min` or `max`, and every bounded value it leaves out where
    /// leaving it out is not bounded (a Bucket without a byte quota, a disk from an image
    /// without a size). Values left as stored are not judged.
    pub fn check(
        &self,
        kind: &Kind,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        for slot in slots(kind, old, object).iter().filter(|s| s.changed) {
            for item in self.items.iter().filter(|i| i.type_ == slot.type_) {
                item.judge(slot, &mut violations);
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

// === impl Item ===

impl Item {
    /// Adds what is wrong with `slot` by this item's bounds to `violations`.
    fn judge(&self, slot: &Slot, violations: &mut Vec<Violation>) {
        let bounds = [("minimum", &self.min), ("maximum", &self.max)];
        for (word, bounds) in bounds {
            let Some(bound) = bounds.get(slot.resource) else {
                continue;
            };
            let Ok(limit) = parse_amount(self.type_, slot.resource, bound) else {
                continue;
            };
            let said = match &slot.value {
                None => match slot.absent {
                    // The schema refuses the object already.
                    Absent::Required => continue,
                    Absent::Unbounded if word == "minimum" => continue,
                    Absent::Unbounded => format!(
                        "{} is not set: a {} without it is unbounded",
                        slot.field,
                        self.type_.name()
                    ),
                    Absent::ImageSize => format!(
                        "{} is not set: a disk made from an image is as large as the image, so give the disk a size",
                        slot.field
                    ),
                },
                Some(value) => {
                    // A value validation refused has no amount: its 422 comes first.
                    let Some(amount) = slot.amount() else {
                        continue;
                    };
                    let outside = match word {
                        "minimum" => amount < limit,
                        _ => amount > limit,
                    };
                    if !outside {
                        continue;
                    }
                    format!("{} is {}", slot.field, show(value))
                }
            };
            violations.push(Violation {
                limit_range: self.limit_range.clone(),
                field: slot.field.clone(),
                message: format!(
                    "{word} {} per {} is {}, but {said}",
                    slot.resource,
                    self.type_.name(),
                    show(bound)
                ),
            });
        }
    }
}

// === impl Slot ===

impl Slot {
    /// The slot's value as an amount (a VM's `cpu` counts whole CPUs).
    fn amount(&self) -> Option<u128> {
        let value = self.value.as_ref()?;
        match self.resource {
            "cpu" => value.as_u64().map(|cpus| u128::from(cpus) * 1000),
            _ => quantity_of(value),
        }
    }

    /// Sets the slot's value in `object`, making the objects on the way (a Bucket's `spec`
    /// and `quota`); a value on the way that is not an object is left for validation.
    fn set(&self, object: &mut Value, value: Value) {
        let mut at = object;
        for step in &self.path {
            let next = match *step {
                Step::Key(key) => at.as_object_mut().map(|map| {
                    let slot = map.entry(key).or_insert(Value::Null);
                    if slot.is_null() {
                        *slot = json!({});
                    }
                    slot
                }),
                Step::Index(i) => at.get_mut(i),
            };
            match next {
                Some(next) => at = next,
                None => return,
            }
        }
        *at = value;
    }
}

impl fmt::Display for Violation {
    /// `maximum cpu per VirtualMachine is 2, but spec.cpu is 4 (LimitRange "limits")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (LimitRange {:?})", self.message, self.limit_range)
    }
}

/// The values of `object` (of `kind`) a LimitRange may default and bound, each marked
/// changed when `old` is none or holds another value there.
fn slots(kind: &Kind, old: Option<&Value>, object: &Value) -> Vec<Slot> {
    if !applies_to(kind) {
        return Vec::new();
    }
    let present = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    let spec = &object["spec"];
    let old_spec = old.map(|o| &o["spec"]);
    let mut slots = Vec::new();
    if kind.kind == "Bucket" {
        let value = present(spec.get("quota").and_then(|q| q.get("bytes")));
        let before = old_spec.map(|s| present(s.get("quota").and_then(|q| q.get("bytes"))));
        slots.push(Slot {
            type_: LimitType::Bucket,
            resource: "storage",
            field: "spec.quota.bytes".into(),
            path: vec![Step::Key("spec"), Step::Key("quota"), Step::Key("bytes")],
            changed: before.is_none_or(|b| b != value),
            value,
            defaultable: true,
            absent: Absent::Unbounded,
        });
        return slots;
    }
    if !spec.is_object() {
        return slots;
    }
    for resource in ["cpu", "memory"] {
        let value = present(spec.get(resource));
        let before = old_spec.map(|s| present(s.get(resource)));
        slots.push(Slot {
            type_: LimitType::VirtualMachine,
            resource,
            field: format!("spec.{resource}"),
            path: vec![Step::Key("spec"), Step::Key(resource)],
            changed: before.is_none_or(|b| b != value),
            value,
            defaultable: true,
            absent: Absent::Required,
        });
    }
    let old_disks = old_spec.and_then(|s| s["disks"].as_array());
    for (i, disk) in spec["disks"].as_array().into_iter().flatten().enumerate() {
        if !disk.is_object() {
            continue;
        }
        let value = present(disk.get("size"));
        // A disk is known by its name across changes.
        let before = match old {
            None => None,
            Some(_) => old_disks
                .into_iter()
                .flatten()
                .find(|d| d.get("name").is_some() && d.get("name") == disk.get("name"))
                .map(|d| present(d.get("size"))),
        };
        let from_image = disk.get("image").is_some_and(|i| !i.is_null());
        slots.push(Slot {
            type_: LimitType::Disk,
            resource: "storage",
            field: format!("spec.disks[{i}].size"),
            path: vec![
                Step::Key("spec"),
                Step::Key("disks"),
                Step::Index(i),
                Step::Key("size"),
            ],
            changed: before.is_none_or(|b| b != value),
            value,
            defaultable: !from_image,
            absent: if from_image {
                Absent::ImageSize
            } else {
                Absent::Required
            },
        });
    }
    slots
}

#[cfg(test)]
mod tests;
