//! Which fields of a Gong record refer to another object (API-NOTES §3.3): a deal's
//! `accountId`, `ownerId` and `stage`, a contact's `accountId`, a lead's `convertedTo*`. Gong
//! drops or hides a record whose referenced object it never received, so the bridge checks them
//! (`crm::references`) and says so in the record's status.

use serde_json::Value;

use super::models::ObjectType;

/// `(field, the object type it refers to)` for each reference field of `object_type`.
pub fn fields(object_type: ObjectType) -> &'static [(&'static str, ObjectType)] {
    use ObjectType::*;
    match object_type {
        Deal => &[
            ("accountId", Account),
            ("ownerId", BusinessUser),
            ("stage", Stage),
        ],
        Contact => &[("accountId", Account)],
        Lead => &[
            ("convertedToAccountId", Account),
            ("convertedToContactId", Contact),
            ("convertedToDealId", Deal),
        ],
        _ => &[],
    }
}

/// One reference a record makes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub field: &'static str,
    pub object_type: ObjectType,
    pub object_id: String,
}

/// The references `record` (a Gong record of `object_type`) makes; a deleted record makes none.
pub fn of(object_type: ObjectType, record: &Value) -> Vec<Reference> {
    if record["isDeleted"] == Value::Bool(true) {
        return Vec::new();
    }
    fields(object_type)
        .iter()
        .filter_map(|(field, target)| {
            let id = record.get(*field)?.as_str().filter(|s| !s.is_empty())?;
            Some(Reference {
                field,
                object_type: *target,
                object_id: id.to_owned(),
            })
        })
        .collect()
}

/// What Gong does with a record whose reference is missing, in words.
pub fn consequence(object_type: ObjectType, field: &str) -> &'static str {
    match (object_type, field) {
        (ObjectType::Deal, "accountId") => "the deal will not show until it is",
        (ObjectType::Deal, "ownerId") => "the deal will not be on the deal board until it is",
        (ObjectType::Deal, "stage") => "the deal's stage will not show until it is",
        (ObjectType::Contact, _) => "the contact will not be linked to its account until it is",
        _ => "the link will not show until it is",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deal_refers_to_its_account_owner_and_stage() {
        let deal =
            json!({"objectId": "d", "accountId": "a1", "ownerId": "u1", "stage": "", "name": "x"});
        let refs = of(ObjectType::Deal, &deal);
        assert_eq!(
            refs.iter()
                .map(|r| (r.field, r.object_type, r.object_id.as_str()))
                .collect::<Vec<_>>(),
            [
                ("accountId", ObjectType::Account, "a1"),
                ("ownerId", ObjectType::BusinessUser, "u1")
            ]
        );
        assert!(of(
            ObjectType::Deal,
            &json!({"accountId": "a1", "isDeleted": true})
        )
        .is_empty());
        assert!(of(ObjectType::Account, &json!({"accountId": "a1"})).is_empty());
    }
}
