package jinja

import (
	"strconv"
)

// maxDepth bounds parser recursion so hostile templates ("((((((...") fail
// with an error instead of exhausting the stack.
const maxDepth = 200

type parser struct {
	toks  []token
	i     int
	depth int
}

func parse(src string) ([]stmt, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	body, end, err := p.parseBody()
	if err != nil {
		return nil, err
	}
	if end != "" {
		return nil, newError(p.cur().pos, "unexpected '%s'", end)
	}
	return body, nil
}

func (p *parser) cur() token { return p.toks[p.i] }
func (p *parser) peek() token {
	if p.i+1 < len(p.toks) {
		return p.toks[p.i+1]
	}
	return p.toks[len(p.toks)-1]
}
func (p *parser) next() token {
	t := p.toks[p.i]
	if p.i < len(p.toks)-1 {
		p.i++
	}
	return t
}

func (p *parser) isOp(op string) bool {
	t := p.cur()
	return t.kind == tOp && t.val == op
}

func (p *parser) isName(name string) bool {
	t := p.cur()
	return t.kind == tName && t.val == name
}

func describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of template"
	case tBlockEnd:
		return "end of statement block"
	case tVarEnd:
		return "end of print statement"
	case tString:
		return "string " + strconv.Quote(t.val)
	}
	return "'" + t.val + "'"
}

func (p *parser) expectOp(op string) error {
	if !p.isOp(op) {
		return newError(p.cur().pos, "expected '%s', got %s", op, describe(p.cur()))
	}
	p.next()
	return nil
}

func (p *parser) expectName() (token, error) {
	t := p.cur()
	if t.kind != tName {
		return t, newError(t.pos, "expected name, got %s", describe(t))
	}
	p.next()
	return t, nil
}

func (p *parser) expectBlockEnd() error {
	if p.cur().kind != tBlockEnd {
		return newError(p.cur().pos, "expected end of statement block, got %s", describe(p.cur()))
	}
	p.next()
	return nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return newError(p.cur().pos, "template nesting deeper than %d", maxDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

// endTags are block keywords that close or split a body; parseBody stops at
// them and returns the keyword with the parser positioned after it.
var endTags = map[string]bool{
	"endif": true, "elif": true, "else": true, "endfor": true, "endset": true,
	"endmacro": true, "endcall": true, "endfilter": true, "endgeneration": true,
}

func (p *parser) parseBody() ([]stmt, string, error) {
	if err := p.enter(); err != nil {
		return nil, "", err
	}
	defer p.leave()
	var body []stmt
	for {
		t := p.cur()
		switch t.kind {
		case tEOF:
			return body, "", nil
		case tText:
			p.next()
			body = append(body, &textStmt{t.val})
		case tVarBegin:
			p.next()
			e, err := p.parseTupleExpr()
			if err != nil {
				return nil, "", err
			}
			if p.cur().kind != tVarEnd {
				return nil, "", newError(p.cur().pos, "expected end of print statement, got %s", describe(p.cur()))
			}
			p.next()
			body = append(body, &outputStmt{t.pos, e})
		case tBlockBegin:
			p.next()
			kw := p.cur()
			if kw.kind != tName {
				return nil, "", newError(kw.pos, "expected statement keyword, got %s", describe(kw))
			}
			if endTags[kw.val] {
				p.next()
				return body, kw.val, nil
			}
			s, err := p.parseStmt()
			if err != nil {
				return nil, "", err
			}
			body = append(body, s)
		default:
			return nil, "", newError(t.pos, "unexpected %s", describe(t))
		}
	}
}

// parseUntil parses a body that must end with one of the given keywords.
func (p *parser) parseUntil(start token, want ...string) ([]stmt, string, error) {
	body, end, err := p.parseBody()
	if err != nil {
		return nil, "", err
	}
	for _, w := range want {
		if end == w {
			return body, end, nil
		}
	}
	if end == "" {
		return nil, "", newError(start.pos, "'%s' block is never closed (expected '%s')", start.val, want[len(want)-1])
	}
	return nil, "", newError(p.toks[p.i-1].pos, "unexpected '%s' inside '%s' block", end, start.val)
}

func (p *parser) parseStmt() (stmt, error) {
	kw := p.next()
	switch kw.val {
	case "if":
		return p.parseIf(kw)
	case "for":
		return p.parseFor(kw)
	case "set":
		return p.parseSet(kw)
	case "macro":
		return p.parseMacro(kw)
	case "call":
		return p.parseCallBlock(kw)
	case "filter":
		return p.parseFilterBlock(kw)
	case "break":
		return &breakStmt{kw.pos}, p.expectBlockEnd()
	case "continue":
		return &continueStmt{kw.pos}, p.expectBlockEnd()
	case "generation":
		// transformers' AssistantTracker marks assistant spans with this
		// block; for rendering it is transparent.
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, _, err := p.parseUntil(kw, "endgeneration")
		if err != nil {
			return nil, err
		}
		return &blockStmt{kw.pos, body}, p.expectBlockEnd()
	}
	return nil, newError(kw.pos, "unknown statement '%s'", kw.val)
}

func (p *parser) parseIf(kw token) (stmt, error) {
	s := &ifStmt{p: kw.pos}
	for {
		cond, err := p.parseTupleExpr()
		if err != nil {
			return nil, err
		}
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, end, err := p.parseUntil(kw, "elif", "else", "endif")
		if err != nil {
			return nil, err
		}
		s.conds = append(s.conds, cond)
		s.bodies = append(s.bodies, body)
		switch end {
		case "elif":
			continue
		case "else":
			if err := p.expectBlockEnd(); err != nil {
				return nil, err
			}
			body, _, err := p.parseUntil(kw, "endif")
			if err != nil {
				return nil, err
			}
			s.bodies = append(s.bodies, body)
		}
		return s, p.expectBlockEnd()
	}
}

func (p *parser) parseAssignTarget() (expr, error) {
	var items []expr
	start := p.cur().pos
	for {
		t, err := p.expectName()
		if err != nil {
			return nil, err
		}
		var e expr = &nameExpr{t.pos, t.val}
		if p.isOp(".") {
			p.next()
			attr, err := p.expectName()
			if err != nil {
				return nil, err
			}
			e = &attrExpr{attr.pos, e, attr.val}
		}
		items = append(items, e)
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	if len(items) == 1 {
		return items[0], nil
	}
	return &tupleExpr{start, items}, nil
}

func (p *parser) parseFor(kw token) (stmt, error) {
	s := &forStmt{p: kw.pos}
	target, err := p.parseAssignTarget()
	if err != nil {
		return nil, err
	}
	s.target = target
	if !p.isName("in") {
		return nil, newError(p.cur().pos, "expected 'in', got %s", describe(p.cur()))
	}
	p.next()
	// The iterable cannot contain a bare conditional: `if` starts the filter.
	iter, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if p.isOp(",") {
		items := []expr{iter}
		for p.isOp(",") {
			p.next()
			e, err := p.parseOr()
			if err != nil {
				return nil, err
			}
			items = append(items, e)
		}
		iter = &tupleExpr{iter.exprPos(), items}
	}
	s.iter = iter
	if p.isName("if") {
		p.next()
		cond, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		s.cond = cond
	}
	if p.isName("recursive") {
		return nil, newError(p.cur().pos, "recursive for loops are not supported")
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	body, end, err := p.parseUntil(kw, "else", "endfor")
	if err != nil {
		return nil, err
	}
	s.body = body
	if end == "else" {
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		s.els, _, err = p.parseUntil(kw, "endfor")
		if err != nil {
			return nil, err
		}
	}
	return s, p.expectBlockEnd()
}

func (p *parser) parseSet(kw token) (stmt, error) {
	s := &setStmt{p: kw.pos}
	target, err := p.parseAssignTarget()
	if err != nil {
		return nil, err
	}
	s.target = target
	if p.isOp("=") {
		p.next()
		v, err := p.parseTupleExpr()
		if err != nil {
			return nil, err
		}
		s.value = v
		return s, p.expectBlockEnd()
	}
	for p.isOp("|") {
		p.next()
		f, err := p.parseFilterCall()
		if err != nil {
			return nil, err
		}
		s.filter = append(s.filter, f)
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	s.body, _, err = p.parseUntil(kw, "endset")
	if err != nil {
		return nil, err
	}
	return s, p.expectBlockEnd()
}

func (p *parser) parseSignature(m *macroDef) error {
	if err := p.expectOp("("); err != nil {
		return err
	}
	for !p.isOp(")") {
		if len(m.params) > 0 {
			if err := p.expectOp(","); err != nil {
				return err
			}
			if p.isOp(")") {
				break
			}
		}
		name, err := p.expectName()
		if err != nil {
			return err
		}
		var def expr
		if p.isOp("=") {
			p.next()
			if def, err = p.parseExpr(); err != nil {
				return err
			}
		}
		m.params = append(m.params, name.val)
		m.defaults = append(m.defaults, def)
	}
	p.next()
	return nil
}

func (p *parser) parseMacro(kw token) (stmt, error) {
	name, err := p.expectName()
	if err != nil {
		return nil, err
	}
	m := &macroDef{name: name.val}
	if err := p.parseSignature(m); err != nil {
		return nil, err
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	m.body, _, err = p.parseUntil(kw, "endmacro")
	if err != nil {
		return nil, err
	}
	if p.cur().kind == tName && p.cur().val == m.name {
		p.next()
	}
	return &macroStmt{kw.pos, m}, p.expectBlockEnd()
}

func (p *parser) parseCallBlock(kw token) (stmt, error) {
	caller := &macroDef{name: "caller"}
	if p.isOp("(") {
		if err := p.parseSignature(caller); err != nil {
			return nil, err
		}
	}
	e, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	c, ok := e.(*callExpr)
	if !ok {
		return nil, newError(e.exprPos(), "expected a call after 'call'")
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	caller.body, _, err = p.parseUntil(kw, "endcall")
	if err != nil {
		return nil, err
	}
	return &callBlockStmt{kw.pos, c, caller}, p.expectBlockEnd()
}

func (p *parser) parseFilterBlock(kw token) (stmt, error) {
	s := &filterBlockStmt{p: kw.pos}
	for {
		f, err := p.parseFilterCall()
		if err != nil {
			return nil, err
		}
		s.filters = append(s.filters, f)
		if !p.isOp("|") {
			break
		}
		p.next()
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	var err error
	s.body, _, err = p.parseUntil(kw, "endfilter")
	if err != nil {
		return nil, err
	}
	return s, p.expectBlockEnd()
}

// Expressions, loosest binding first, following jinja2's parser: filters
// and tests bind tighter than arithmetic (`a + b | trim` trims b only).

// parseTupleExpr parses `a, b` as a tuple where jinja2 allows it.
func (p *parser) parseTupleExpr() (expr, error) {
	e, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	if !p.isOp(",") {
		return e, nil
	}
	items := []expr{e}
	for p.isOp(",") {
		p.next()
		if k := p.cur().kind; k == tVarEnd || k == tBlockEnd {
			break
		}
		e, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		items = append(items, e)
	}
	return &tupleExpr{items[0].exprPos(), items}, nil
}

func (p *parser) parseExpr() (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	e, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	for p.isName("if") {
		t := p.next()
		cond, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		var no expr
		if p.isName("else") {
			p.next()
			if no, err = p.parseExpr(); err != nil {
				return nil, err
			}
		}
		e = &condExpr{t.pos, cond, e, no}
	}
	return e, nil
}

func (p *parser) parseOr() (expr, error) {
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.isName("or") {
		t := p.next()
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, "or", l, r}
	}
	return l, nil
}

func (p *parser) parseAnd() (expr, error) {
	l, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	for p.isName("and") {
		t := p.next()
		r, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, "and", l, r}
	}
	return l, nil
}

func (p *parser) parseNot() (expr, error) {
	if p.isName("not") {
		t := p.next()
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer p.leave()
		x, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		return &unaryExpr{t.pos, "not", x}, nil
	}
	return p.parseCompare()
}

func (p *parser) parseCompare() (expr, error) {
	x, err := p.parseMath1()
	if err != nil {
		return nil, err
	}
	c := &compareExpr{p: x.exprPos(), x: x}
	for {
		t := p.cur()
		var op string
		switch {
		case t.kind == tOp && (t.val == "==" || t.val == "!=" || t.val == "<" || t.val == "<=" || t.val == ">" || t.val == ">="):
			op = t.val
			p.next()
		case p.isName("in"):
			op = "in"
			p.next()
		case p.isName("not") && p.peek().kind == tName && p.peek().val == "in":
			op = "not in"
			p.next()
			p.next()
		default:
			if len(c.ops) == 0 {
				return x, nil
			}
			return c, nil
		}
		y, err := p.parseMath1()
		if err != nil {
			return nil, err
		}
		c.ops = append(c.ops, op)
		c.ys = append(c.ys, y)
	}
}

func (p *parser) parseMath1() (expr, error) {
	l, err := p.parseConcat()
	if err != nil {
		return nil, err
	}
	for p.isOp("+") || p.isOp("-") {
		t := p.next()
		r, err := p.parseConcat()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, t.val, l, r}
	}
	return l, nil
}

func (p *parser) parseConcat() (expr, error) {
	l, err := p.parseMath2()
	if err != nil {
		return nil, err
	}
	for p.isOp("~") {
		t := p.next()
		r, err := p.parseMath2()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, "~", l, r}
	}
	return l, nil
}

func (p *parser) parseMath2() (expr, error) {
	l, err := p.parsePow()
	if err != nil {
		return nil, err
	}
	for p.isOp("*") || p.isOp("/") || p.isOp("//") || p.isOp("%") {
		t := p.next()
		r, err := p.parsePow()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, t.val, l, r}
	}
	return l, nil
}

func (p *parser) parsePow() (expr, error) {
	l, err := p.parseUnary(true)
	if err != nil {
		return nil, err
	}
	for p.isOp("**") {
		t := p.next()
		r, err := p.parseUnary(true)
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{t.pos, "**", l, r}
	}
	return l, nil
}

func (p *parser) parseUnary(withFilter bool) (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	var e expr
	if p.isOp("-") || p.isOp("+") {
		t := p.next()
		x, err := p.parseUnary(false)
		if err != nil {
			return nil, err
		}
		e = &unaryExpr{t.pos, t.val, x}
	} else {
		var err error
		if e, err = p.parsePrimary(); err != nil {
			return nil, err
		}
	}
	e, err := p.parsePostfix(e)
	if err != nil {
		return nil, err
	}
	if withFilter {
		return p.parseFilterTests(e)
	}
	return e, nil
}

func (p *parser) parsePrimary() (expr, error) {
	t := p.cur()
	switch t.kind {
	case tName:
		p.next()
		switch t.val {
		case "true", "True":
			return &constExpr{t.pos, true}, nil
		case "false", "False":
			return &constExpr{t.pos, false}, nil
		case "none", "None":
			return &constExpr{t.pos, nil}, nil
		}
		return &nameExpr{t.pos, t.val}, nil
	case tString:
		p.next()
		s := t.val
		for p.cur().kind == tString {
			s += p.next().val
		}
		return &constExpr{t.pos, s}, nil
	case tInt:
		p.next()
		v, err := strconv.ParseInt(t.val, 10, 64)
		if err != nil {
			return nil, newError(t.pos, "integer literal %s out of range", t.val)
		}
		return &constExpr{t.pos, v}, nil
	case tFloat:
		p.next()
		v, err := strconv.ParseFloat(t.val, 64)
		if err != nil {
			return nil, newError(t.pos, "bad float literal %s", t.val)
		}
		return &constExpr{t.pos, v}, nil
	case tOp:
		switch t.val {
		case "(":
			p.next()
			if p.isOp(")") {
				p.next()
				return &tupleExpr{t.pos, nil}, nil
			}
			e, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			if p.isOp(")") {
				p.next()
				return e, nil
			}
			items := []expr{e}
			for p.isOp(",") {
				p.next()
				if p.isOp(")") {
					break
				}
				e, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				items = append(items, e)
			}
			if err := p.expectOp(")"); err != nil {
				return nil, err
			}
			return &tupleExpr{t.pos, items}, nil
		case "[":
			p.next()
			l := &listExpr{p: t.pos}
			for !p.isOp("]") {
				if len(l.items) > 0 {
					if err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("]") {
						break
					}
				}
				e, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				l.items = append(l.items, e)
			}
			p.next()
			return l, nil
		case "{":
			p.next()
			d := &dictExpr{p: t.pos}
			for !p.isOp("}") {
				if len(d.keys) > 0 {
					if err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("}") {
						break
					}
				}
				k, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				if err := p.expectOp(":"); err != nil {
					return nil, err
				}
				v, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				d.keys = append(d.keys, k)
				d.values = append(d.values, v)
			}
			p.next()
			return d, nil
		}
	}
	return nil, newError(t.pos, "unexpected %s", describe(t))
}

func (p *parser) parsePostfix(e expr) (expr, error) {
	for {
		t := p.cur()
		switch {
		case p.isOp("."):
			p.next()
			n := p.cur()
			switch n.kind {
			case tName:
				p.next()
				e = &attrExpr{n.pos, e, n.val}
			case tInt:
				p.next()
				v, _ := strconv.ParseInt(n.val, 10, 64)
				e = &itemExpr{n.pos, e, &constExpr{n.pos, v}}
			default:
				return nil, newError(n.pos, "expected attribute name after '.', got %s", describe(n))
			}
		case p.isOp("["):
			p.next()
			var err error
			if e, err = p.parseSubscript(t, e); err != nil {
				return nil, err
			}
		case p.isOp("("):
			args, kwargs, err := p.parseCallArgs()
			if err != nil {
				return nil, err
			}
			e = &callExpr{t.pos, e, args, kwargs}
		default:
			return e, nil
		}
	}
}

func (p *parser) parseSubscript(t token, obj expr) (expr, error) {
	var parts [3]expr
	n := 0
	for {
		if !p.isOp(":") && !p.isOp("]") {
			e, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			parts[n] = e
		}
		if p.isOp("]") {
			p.next()
			break
		}
		if !p.isOp(":") || n == 2 {
			return nil, newError(p.cur().pos, "expected ']' in subscript, got %s", describe(p.cur()))
		}
		p.next()
		n++
	}
	if n == 0 {
		if parts[0] == nil {
			return nil, newError(t.pos, "empty subscript")
		}
		return &itemExpr{t.pos, obj, parts[0]}, nil
	}
	return &sliceExpr{t.pos, obj, parts[0], parts[1], parts[2]}, nil
}

func (p *parser) parseCallArgs() ([]expr, []kwarg, error) {
	if err := p.expectOp("("); err != nil {
		return nil, nil, err
	}
	var args []expr
	var kwargs []kwarg
	first := true
	for !p.isOp(")") {
		if !first {
			if err := p.expectOp(","); err != nil {
				return nil, nil, err
			}
			if p.isOp(")") {
				break
			}
		}
		first = false
		if p.cur().kind == tName && p.peek().kind == tOp && p.peek().val == "=" {
			name := p.next()
			p.next()
			v, err := p.parseExpr()
			if err != nil {
				return nil, nil, err
			}
			kwargs = append(kwargs, kwarg{name.val, v})
			continue
		}
		if len(kwargs) > 0 {
			return nil, nil, newError(p.cur().pos, "positional argument follows keyword argument")
		}
		v, err := p.parseExpr()
		if err != nil {
			return nil, nil, err
		}
		args = append(args, v)
	}
	p.next()
	return args, kwargs, nil
}

func (p *parser) parseFilterCall() (*filterCall, error) {
	name, err := p.expectName()
	if err != nil {
		return nil, err
	}
	f := &filterCall{p: name.pos, name: name.val}
	for p.isOp(".") {
		p.next()
		n, err := p.expectName()
		if err != nil {
			return nil, err
		}
		f.name += "." + n.val
	}
	if p.isOp("(") {
		if f.args, f.kwargs, err = p.parseCallArgs(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (p *parser) parseFilterTests(e expr) (expr, error) {
	for {
		switch {
		case p.isOp("|"):
			t := p.next()
			f, err := p.parseFilterCall()
			if err != nil {
				return nil, err
			}
			e = &filterExpr{t.pos, e, f}
		case p.isName("is"):
			t := p.next()
			negate := false
			if p.isName("not") {
				p.next()
				negate = true
			}
			name := p.cur()
			if name.kind != tName {
				return nil, newError(name.pos, "expected test name after 'is', got %s", describe(name))
			}
			p.next()
			te := &testExpr{p: t.pos, obj: e, name: name.val, negate: negate}
			// As in jinja2, a name after the test name is its argument
			// unless it is else/or/and: `x is divisibleby 3`.
			c := p.cur()
			switch {
			case p.isName("is"):
				return nil, newError(c.pos, "you cannot chain multiple tests with 'is'")
			case p.isOp("("):
				args, _, err := p.parseCallArgs()
				if err != nil {
					return nil, err
				}
				te.args = args
			case c.kind == tString || c.kind == tInt || c.kind == tFloat || p.isOp("[") || p.isOp("{") ||
				c.kind == tName && c.val != "else" && c.val != "or" && c.val != "and":
				a, err := p.parsePrimary()
				if err != nil {
					return nil, err
				}
				if a, err = p.parsePostfix(a); err != nil {
					return nil, err
				}
				te.args = []expr{a}
			}
			e = te
		default:
			return e, nil
		}
	}
}
