//! The prompts: `explore_dataset(topic)` and `answer_with_data(question, purpose)`, their texts in `prompts/*.md`;
//! getting one is audited like every other request.

use super::*;

/// Arguments of the `explore_dataset` prompt.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExploreArgs {
    /// What data you are looking for, e.g. "late deliveries".
    pub topic: String,
}

/// Arguments of the `answer_with_data` prompt.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AnswerArgs {
    /// The question to answer.
    pub question: String,
    /// Why the answer is needed (checked against each contract's allowed purposes).
    #[serde(default)]
    pub purpose: Option<String>,
}

/// Why `prompts/get` of `request` cannot be answered — no such prompt, or arguments that do not fit it — or
/// `None` when the prompt's router takes it.
pub(super) fn refusal(request: &rmcp::model::GetPromptRequestParams) -> Option<String> {
    fn fits<T: serde::de::DeserializeOwned>(args: Option<&JsonObject>) -> Result<(), String> {
        let args = serde_json::Value::Object(args.cloned().unwrap_or_default());
        serde_json::from_value::<T>(args)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    let name: String = request.name.chars().take(64).collect();
    let fit = match request.name.as_str() {
        "explore_dataset" => fits::<ExploreArgs>(request.arguments.as_ref()),
        "answer_with_data" => fits::<AnswerArgs>(request.arguments.as_ref()),
        _ => {
            return Some(format!(
                "no prompt named {name:?}; prompts/list names the prompts"
            ));
        }
    };
    fit.err().map(|e| {
        format!("invalid arguments for prompt {name:?}: {e}; prompts/list shows its arguments")
    })
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

#[prompt_router(vis = "pub(super)")]
impl ParleyServer {
    /// Explore what data exists about a topic: find tables, read their schemas and contracts.
    #[prompt(name = "explore_dataset")]
    async fn explore_dataset(
        &self,
        Parameters(a): Parameters<ExploreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Vec<PromptMessage>, ErrorData> {
        self.audited(&ctx, "prompts/get", "explore_dataset").await?;
        Ok(vec![PromptMessage::new_text(
            Role::User,
            fill(
                include_str!("../../prompts/explore_dataset.md"),
                &[("topic", &a.topic)],
            ),
        )])
    }

    /// Answer a question with data: find the tables, check the contracts, run the smallest query, cite snapshots.
    #[prompt(name = "answer_with_data")]
    async fn answer_with_data(
        &self,
        Parameters(a): Parameters<AnswerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Vec<PromptMessage>, ErrorData> {
        self.audited(&ctx, "prompts/get", "answer_with_data")
            .await?;
        let purpose = a.purpose.unwrap_or_else(|| "not stated".to_string());
        Ok(vec![PromptMessage::new_text(
            Role::User,
            fill(
                include_str!("../../prompts/answer_with_data.md"),
                &[("question", &a.question), ("purpose", &purpose)],
            ),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `refusal` names the prompts by hand: every prompt the router lists must be one it knows, and takes the
    /// arguments the list shows (each given as text); a prompt added to the router alone fails here.
    #[test]
    fn every_listed_prompt_is_known_to_the_refusal_check() {
        let listed = ParleyServer::prompt_router().list_all();
        assert!(!listed.is_empty());
        for prompt in listed {
            let arguments: JsonObject = prompt
                .arguments
                .iter()
                .flatten()
                .map(|a| (a.name.clone(), serde_json::Value::from("text")))
                .collect();
            let mut request = rmcp::model::GetPromptRequestParams::new(prompt.name.clone());
            request.arguments = Some(arguments);
            assert_eq!(refusal(&request), None, "prompt {}", prompt.name);
        }
        let unknown = rmcp::model::GetPromptRequestParams::new("no_such_prompt");
        assert!(refusal(&unknown).is_some_and(|why| why.contains("no prompt named")));
    }
}
