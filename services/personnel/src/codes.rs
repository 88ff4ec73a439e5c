//! The code lists of the forms (证件类型, 民族, 经费补助形式, 人员身份, 编制类型, 离退休类别), read from the database at
//! start-up: versioned data, so a province changes them with a migration, not a release of code.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// Code lists by name, each a list of (code, label) in display order.
#[derive(Debug, Clone, Default)]
pub struct CodeLists {
    lists: BTreeMap<String, Vec<(String, String)>>,
}

impl CodeLists {
    /// The codes valid today.
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select list, code, label from code_lists \
             where valid_from <= current_date and (valid_to is null or valid_to > current_date) \
             order by list, sort, code",
        )
        .fetch_all(pool)
        .await?;
        let mut lists: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (list, code, label) in rows {
            lists.entry(list).or_default().push((code, label));
        }
        Ok(Self { lists })
    }

    /// The code of `given`, which may be the code or its exact label.
    pub fn resolve(&self, list: &str, given: &str) -> Option<String> {
        let given = given.trim();
        self.lists.get(list)?.iter().find(|(code, label)| code == given || label == given).map(|(code, _)| code.clone())
    }

    pub fn label(&self, list: &str, code: &str) -> Option<&str> {
        self.lists.get(list)?.iter().find(|(known, _)| known == code).map(|(_, label)| label.as_str())
    }

    pub fn all(&self) -> &BTreeMap<String, Vec<(String, String)>> {
        &self.lists
    }
}
