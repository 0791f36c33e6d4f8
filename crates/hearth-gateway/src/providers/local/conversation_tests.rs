use hearth_protocol::tools::ToolFormat;
use hearth_protocol::{Message, ToolDefinition};
use serde_json::json;

use super::*;

fn weather() -> ToolDefinition {
    ToolDefinition {
        name: "get_weather".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }
}

/// A user question, the assistant's call, the tool's answer.
fn exchange() -> CanonicalRequest {
    CanonicalRequest {
        model: "m".into(),
        system: Some("sys".into()),
        messages: vec![
            Message::text(MessageRole::User, "Weather in Paris?"),
            Message {
                role: MessageRole::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: "c1".into(),
                    name: "get_weather".into(),
                    input: json!({"city": "Paris"}),
                }],
            },
            Message {
                role: MessageRole::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: "c1".into(),
                    content: "18C".into(),
                    is_error: false,
                }],
            },
        ],
        tools: vec![weather()],
        ..Default::default()
    }
}

const NATIVE: ChatTraits = ChatTraits {
    format: ToolFormat::Hermes,
    template_renders_tools: true,
    thinks: false,
    call_marker_token: None,
};
const PLAIN: ChatTraits = ChatTraits {
    format: ToolFormat::Hermes,
    template_renders_tools: false,
    thinks: false,
    call_marker_token: None,
};

#[test]
fn a_template_with_tools_gets_calls_results_and_declarations() {
    let c = conversation(&exchange(), NATIVE);
    let roles: Vec<Role> = c.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool]);
    assert_eq!(c.messages[0].content, "sys", "the template prints the tools, not Hearth");
    assert_eq!(c.messages[2].tool_calls[0].function.arguments, json!({"city": "Paris"}));
    assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(c.messages[3].name.as_deref(), Some("get_weather"));
    assert_eq!(c.tools[0]["function"]["name"], "get_weather");
}

#[test]
fn a_template_without_tools_gets_hearths_prompt_and_text_history() {
    let c = conversation(&exchange(), PLAIN);
    let roles: Vec<Role> = c.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::User]);
    assert!(c.messages[0].content.starts_with("sys\n\n# Tools"), "{}", c.messages[0].content);
    assert_eq!(
        c.messages[2].content,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
    );
    assert_eq!(c.messages[3].content, "<tool_response>\n18C\n</tool_response>");
    assert!(c.tools.is_empty());
}

#[test]
fn tool_choice_none_hides_the_tools_and_reads_no_calls() {
    let mut request = exchange();
    request.tool_choice = Some(ToolChoice::None);
    assert!(conversation(&request, NATIVE).tools.is_empty());
    assert_eq!(conversation(&request, PLAIN).messages[0].content, "sys");
    assert!(!parses_tool_calls(&request));
    assert_eq!(output_constraint(&request, NATIVE), None);
}

#[test]
fn the_grammar_follows_tool_choice_and_response_format() {
    let mut request = exchange();
    request.tool_choice = Some(ToolChoice::Required);
    assert!(matches!(output_constraint(&request, NATIVE), Some(OutputConstraint::Lark { .. })));
    let format = OutputConstraint::schema(json!({"type": "object"}));
    request.response_format = Some(format.clone());
    assert!(
        matches!(output_constraint(&request, NATIVE), Some(OutputConstraint::Lark { .. })),
        "a required call wins over the answer's format"
    );
    request.tool_choice = Some(ToolChoice::Auto);
    assert_eq!(output_constraint(&request, NATIVE), Some(format));
}

#[test]
fn template_kwargs_pass_through() {
    let mut request = exchange();
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("enable_thinking".into(), json!(false));
    request.chat_template_kwargs = Some(kwargs);
    assert_eq!(conversation(&request, NATIVE).template_kwargs["enable_thinking"], json!(false));
}

#[test]
fn a_thinking_switch_becomes_enable_thinking_unless_the_caller_set_it() {
    let mut request = exchange();
    request.thinking = Some(hearth_protocol::Thinking { enabled: false, budget_tokens: None });
    assert_eq!(conversation(&request, NATIVE).template_kwargs["enable_thinking"], json!(false));
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("enable_thinking".into(), json!(true));
    request.chat_template_kwargs = Some(kwargs);
    assert_eq!(conversation(&request, NATIVE).template_kwargs["enable_thinking"], json!(true));
}
