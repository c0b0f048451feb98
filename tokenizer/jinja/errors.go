package jinja

import (
	"errors"
	"fmt"
	"strings"
)

// Error is a parse or render error at a template position (1-based line and
// column; 0 when unknown).
type Error struct {
	Line, Col int
	Msg       string
	// Raised is set when the template called raise_exception(Msg).
	Raised bool
}

func (e *Error) Error() string {
	// One line, whatever the template's message holds.
	msg := strings.ReplaceAll(e.Msg, "\n", `\n`)
	if e.Raised {
		msg = "raise_exception: " + msg
	}
	if e.Line == 0 {
		return msg
	}
	return fmt.Sprintf("%d:%d: %s", e.Line, e.Col, msg)
}

func newError(p pos, format string, args ...any) error {
	return &Error{Line: p.line, Col: p.col, Msg: fmt.Sprintf(format, args...)}
}

// errorf makes an error without a position; atPos adds the position of the
// expression that raised it.
func errorf(format string, args ...any) error {
	return &Error{Msg: fmt.Sprintf(format, args...)}
}

func atPos(err error, p pos) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Line == 0 {
			c := *e
			c.Line, c.Col = p.line, p.col
			return &c
		}
		return err
	}
	return &Error{Line: p.line, Col: p.col, Msg: err.Error()}
}
