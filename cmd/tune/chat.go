package main

import (
	"fmt"

	"github.com/tunellm/tune/tokenizer"
)

// renderChatJSON renders a JSON list of messages with the model's chat template, as
// transformers' apply_chat_template does (bos_token and eos_token as variables).
func renderChatJSON(tok *tokenizer.Tokenizer, msgsJSON []byte, addGenerationPrompt bool, thinking *bool) (string, error) {
	msgs, err := tokenizer.ParseMessagesJSON(msgsJSON)
	if err != nil {
		return "", fmt.Errorf("chat messages: %w", err)
	}
	return renderChat(tok, msgs, addGenerationPrompt, thinking)
}

func renderChat(tok *tokenizer.Tokenizer, msgs []tokenizer.Message, addGenerationPrompt bool, thinking *bool) (string, error) {
	cfg := tok.Config()
	if cfg.ChatTemplate == "" {
		return "", fmt.Errorf("chat template: the model folder has no chat_template (tokenizer_config.json or chat_template.jinja); drop --chat for plain text")
	}
	return tokenizer.RenderChat(cfg.ChatTemplate, msgs, tokenizer.ChatOptions{
		AddGenerationPrompt: addGenerationPrompt,
		EnableThinking:      thinking,
		BOSToken:            cfg.BOSToken,
		EOSToken:            cfg.EOSToken,
	})
}
