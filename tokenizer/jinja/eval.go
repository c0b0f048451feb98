package jinja

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits that keep a hostile or buggy template from running away. Real chat
// templates stay orders of magnitude below them.
const (
	maxOutput     = 64 << 20  // bytes written, all capture buffers together
	maxIterations = 1_000_000 // loop iterations plus macro calls
	maxCallDepth  = 100       // nested macro calls (recursion)
	maxWork       = 1 << 30   // bytes of strings and list slots built by operators, filters and calls
	maxSeqLen     = 1_000_000 // elements in a list built by + or *
)

var (
	errBreak    = errors.New("break")
	errContinue = errors.New("continue")
)

// Template is a parsed template, safe for concurrent Render calls.
type Template struct {
	body []stmt
}

// Parse parses template source. Errors are *Error with the line and column.
func Parse(src string) (*Template, error) {
	body, err := parse(src)
	if err != nil {
		return nil, err
	}
	return &Template{body: body}, nil
}

// Render evaluates the template with the given variables, which FromGo
// converts. A variable may override a global (range, namespace,
// raise_exception, strftime_now, ...).
func (t *Template) Render(vars map[string]any) (string, error) {
	r := &renderer{out: &strings.Builder{}}
	g := newFrame(nil)
	for k, v := range globals {
		g.vars[k] = v
	}
	g.vars["strftime_now"] = Func(func(args []any, _ *Map) (any, error) {
		if len(args) != 1 {
			return nil, errorf("strftime_now() takes exactly one argument (%d given)", len(args))
		}
		f, ok := args[0].(string)
		if !ok {
			return nil, errorf("strftime_now() argument must be str, not %s", typeName(args[0]))
		}
		return Strftime(time.Now(), f), nil
	})
	for k, v := range vars {
		g.vars[k] = FromGo(v)
	}
	if err := r.execBody(t.body, newFrame(g)); err != nil {
		if errors.Is(err, errBreak) || errors.Is(err, errContinue) {
			return "", errorf("'break' or 'continue' outside a loop")
		}
		return "", err
	}
	return r.out.String(), nil
}

type frame struct {
	vars   map[string]any
	parent *frame
}

func newFrame(parent *frame) *frame { return &frame{vars: map[string]any{}, parent: parent} }

func (f *frame) lookup(name string) (any, bool) {
	for ; f != nil; f = f.parent {
		if v, ok := f.vars[name]; ok {
			return v, true
		}
	}
	return nil, false
}

type renderer struct {
	out     *strings.Builder
	written int
	steps   int
	depth   int
	work    int
}

// charge counts the size of a value an operator, filter or call built, so
// that a loop rebuilding a huge string fails instead of running for hours.
func (r *renderer) charge(v any, p pos) error {
	switch x := v.(type) {
	case string:
		r.work += len(x)
	case []any:
		r.work += 16 * len(x)
	case Tuple:
		r.work += 16 * len(x)
	default:
		return nil
	}
	if r.work > maxWork {
		return newError(p, "template builds more than %d bytes of values", maxWork)
	}
	return nil
}

func (r *renderer) write(s string) error {
	r.written += len(s)
	if r.written > maxOutput {
		return errorf("output exceeds %d bytes", maxOutput)
	}
	r.out.WriteString(s)
	return nil
}

func (r *renderer) step() error {
	r.steps++
	if r.steps > maxIterations {
		return errorf("more than %d loop iterations", maxIterations)
	}
	return nil
}

// capture runs fn with output redirected and returns what it wrote.
func (r *renderer) capture(fn func() error) (string, error) {
	saved := r.out
	r.out = &strings.Builder{}
	err := fn()
	s := r.out.String()
	r.out = saved
	return s, err
}

func (r *renderer) execBody(body []stmt, f *frame) error {
	for _, s := range body {
		if err := r.exec(s, f); err != nil {
			return err
		}
	}
	return nil
}

func (r *renderer) exec(s stmt, f *frame) error {
	switch s := s.(type) {
	case *textStmt:
		return r.write(s.text)
	case *outputStmt:
		v, err := r.eval(s.e, f)
		if err != nil {
			return err
		}
		return r.write(toStr(v))
	case *ifStmt:
		for i, c := range s.conds {
			v, err := r.eval(c, f)
			if err != nil {
				return err
			}
			if truthy(v) {
				return r.execBody(s.bodies[i], f)
			}
		}
		if len(s.bodies) > len(s.conds) {
			return r.execBody(s.bodies[len(s.conds)], f)
		}
		return nil
	case *forStmt:
		return r.execFor(s, f)
	case *setStmt:
		var v any
		if s.value != nil {
			var err error
			if v, err = r.eval(s.value, f); err != nil {
				return err
			}
		} else {
			out, err := r.capture(func() error { return r.execBody(s.body, newFrame(f)) })
			if err != nil {
				return err
			}
			v = out
			for _, fc := range s.filter {
				if v, err = r.applyFilter(fc, v, f); err != nil {
					return err
				}
			}
		}
		return r.assign(s.target, v, f, s.p)
	case *macroStmt:
		f.vars[s.m.name] = &Macro{name: s.m.name, def: s.m, closure: f, r: r}
		return nil
	case *callBlockStmt:
		caller := &Macro{name: "caller", def: s.caller, closure: f, r: r}
		fn, err := r.eval(s.call.fn, f)
		if err != nil {
			return err
		}
		args, kwargs, err := r.evalArgs(s.call.args, s.call.kwargs, f)
		if err != nil {
			return err
		}
		kwargs.Set("caller", caller)
		v, err := r.callValue(fn, args, kwargs, s.call.p)
		if err != nil {
			return err
		}
		return r.write(toStr(v))
	case *filterBlockStmt:
		out, err := r.capture(func() error { return r.execBody(s.body, f) })
		if err != nil {
			return err
		}
		var v any = out
		for _, fc := range s.filters {
			if v, err = r.applyFilter(fc, v, f); err != nil {
				return err
			}
		}
		return r.write(toStr(v))
	case *breakStmt:
		return errBreak
	case *continueStmt:
		return errContinue
	case *blockStmt:
		return r.execBody(s.body, f)
	}
	return fmt.Errorf("jinja: unknown statement %T", s)
}

func (r *renderer) assign(target expr, v any, f *frame, p pos) error {
	switch t := target.(type) {
	case *nameExpr:
		f.vars[t.name] = v
		return nil
	case *attrExpr:
		obj, err := r.eval(t.obj, f)
		if err != nil {
			return err
		}
		ns, ok := obj.(*Namespace)
		if !ok {
			return newError(t.p, "cannot assign attribute on non-namespace object %s", typeName(obj))
		}
		ns.m.Set(t.name, v)
		return nil
	case *tupleExpr:
		items, err := iterate(v)
		if err != nil {
			return newError(p, "cannot unpack: %v", err)
		}
		if len(items) != len(t.items) {
			return newError(p, "cannot unpack %d values into %d names", len(items), len(t.items))
		}
		for i, e := range t.items {
			if err := r.assign(e, items[i], f, p); err != nil {
				return err
			}
		}
		return nil
	}
	return newError(p, "cannot assign to this expression")
}

// loopInfo is the `loop` variable inside a for loop.
type loopInfo struct {
	index0 int
	items  []any
	depth  int
}

func (r *renderer) execFor(s *forStmt, f *frame) error {
	iterV, err := r.eval(s.iter, f)
	if err != nil {
		return err
	}
	all, err := iterate(iterV)
	if err != nil {
		return newError(s.iter.exprPos(), "%v", err)
	}
	items := all
	if s.cond != nil {
		// The filter sees the loop target but not `loop`, as in jinja2.
		items = nil
		for _, it := range all {
			if err := r.step(); err != nil {
				return newError(s.p, "%v", err)
			}
			cf := newFrame(f)
			if err := r.assign(s.target, it, cf, s.p); err != nil {
				return err
			}
			ok, err := r.eval(s.cond, cf)
			if err != nil {
				return err
			}
			if truthy(ok) {
				items = append(items, it)
			}
		}
	}
	if len(items) == 0 {
		return r.execBody(s.els, f)
	}
	// loop.depth counts recursive loop() calls, which are not supported,
	// so it is always 1 (nested for loops each start at 1, as in jinja2).
	depth := 1
	for i, it := range items {
		if err := r.step(); err != nil {
			return newError(s.p, "%v", err)
		}
		// A fresh frame per iteration: `set` inside a loop body does not
		// survive the iteration, which is why templates use namespace().
		bf := newFrame(f)
		bf.vars["loop"] = &loopInfo{index0: i, items: items, depth: depth}
		if err := r.assign(s.target, it, bf, s.p); err != nil {
			return err
		}
		err := r.execBody(s.body, bf)
		if errors.Is(err, errBreak) {
			break
		}
		if err != nil && !errors.Is(err, errContinue) {
			return err
		}
	}
	return nil
}

// Macro is a template-defined callable.
type Macro struct {
	name    string
	def     *macroDef
	closure *frame
	r       *renderer
}

func (m *Macro) call(args []any, kwargs *Map, p pos) (any, error) {
	r := m.r
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > maxCallDepth {
		return nil, newError(p, "macro '%s': call depth exceeds %d", m.name, maxCallDepth)
	}
	if err := r.step(); err != nil {
		return nil, newError(p, "%v", err)
	}
	f := newFrame(m.closure)
	var varargs []any
	for i, a := range args {
		if i < len(m.def.params) {
			f.vars[m.def.params[i]] = a
		} else {
			varargs = append(varargs, a)
		}
	}
	extra := NewMap()
	if kwargs != nil {
		for _, k := range kwargs.keys {
			ks, _ := k.(string)
			v, _ := kwargs.Get(k)
			known := ks == "caller"
			for _, p := range m.def.params {
				if p == ks {
					known = true
				}
			}
			if known {
				f.vars[ks] = v
			} else {
				extra.Set(k, v)
			}
		}
	}
	for i, name := range m.def.params {
		if _, ok := f.vars[name]; ok {
			continue
		}
		if m.def.defaults[i] != nil {
			v, err := r.eval(m.def.defaults[i], f)
			if err != nil {
				return nil, err
			}
			f.vars[name] = v
		} else {
			f.vars[name] = Undefined{fmt.Sprintf("parameter '%s' was not provided", name)}
		}
	}
	f.vars["varargs"] = Tuple(varargs)
	f.vars["kwargs"] = extra
	out, err := r.capture(func() error { return r.execBody(m.def.body, f) })
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (r *renderer) evalArgs(args []expr, kwargs []kwarg, f *frame) ([]any, *Map, error) {
	vals := make([]any, len(args))
	for i, a := range args {
		v, err := r.eval(a, f)
		if err != nil {
			return nil, nil, err
		}
		vals[i] = v
	}
	kw := NewMap()
	for _, k := range kwargs {
		v, err := r.eval(k.v, f)
		if err != nil {
			return nil, nil, err
		}
		kw.Set(k.name, v)
	}
	return vals, kw, nil
}

func (r *renderer) callValue(fn any, args []any, kwargs *Map, p pos) (any, error) {
	switch fn := fn.(type) {
	case *Macro:
		return fn.call(args, kwargs, p)
	case Func:
		v, err := fn(args, kwargs)
		if err != nil {
			return nil, atPos(err, p)
		}
		return v, nil
	case Undefined:
		return nil, newError(p, "%s", fn.Hint)
	}
	return nil, newError(p, "'%s' object is not callable", typeName(fn))
}

func (r *renderer) eval(e expr, f *frame) (any, error) {
	switch e := e.(type) {
	case *constExpr:
		return e.v, nil
	case *nameExpr:
		if v, ok := f.lookup(e.name); ok {
			return v, nil
		}
		return Undefined{fmt.Sprintf("'%s' is undefined", e.name)}, nil
	case *listExpr:
		out := make([]any, len(e.items))
		for i, it := range e.items {
			v, err := r.eval(it, f)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case *tupleExpr:
		out := make(Tuple, len(e.items))
		for i, it := range e.items {
			v, err := r.eval(it, f)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case *dictExpr:
		m := NewMap()
		for i := range e.keys {
			k, err := r.eval(e.keys[i], f)
			if err != nil {
				return nil, err
			}
			if !hashable(k) {
				return nil, newError(e.keys[i].exprPos(), "unhashable type: '%s'", typeName(k))
			}
			v, err := r.eval(e.values[i], f)
			if err != nil {
				return nil, err
			}
			m.Set(k, v)
		}
		return m, nil
	case *attrExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		v, err := getAttr(obj, e.name)
		return v, atPos(err, e.p)
	case *itemExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		k, err := r.eval(e.key, f)
		if err != nil {
			return nil, err
		}
		v, err := getItem(obj, k)
		return v, atPos(err, e.p)
	case *sliceExpr:
		return r.evalSlice(e, f)
	case *callExpr:
		fn, err := r.eval(e.fn, f)
		if err != nil {
			return nil, err
		}
		args, kwargs, err := r.evalArgs(e.args, e.kwargs, f)
		if err != nil {
			return nil, err
		}
		v, err := r.callValue(fn, args, kwargs, e.p)
		if err != nil {
			return nil, err
		}
		return v, r.charge(v, e.p)
	case *filterExpr:
		v, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		if v, err = r.applyFilter(e.f, v, f); err != nil {
			return nil, err
		}
		return v, r.charge(v, e.p)
	case *testExpr:
		v, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		args, _, err := r.evalArgs(e.args, nil, f)
		if err != nil {
			return nil, err
		}
		ok, err := runTest(e.name, v, args, r)
		if err != nil {
			return nil, atPos(err, e.p)
		}
		return ok != e.negate, nil
	case *unaryExpr:
		x, err := r.eval(e.x, f)
		if err != nil {
			return nil, err
		}
		switch e.op {
		case "not":
			return !truthy(x), nil
		case "-":
			switch v := x.(type) {
			case int64:
				return -v, nil
			case float64:
				return -v, nil
			case bool:
				return -toInt(v), nil
			}
		case "+":
			switch x.(type) {
			case int64, float64:
				return x, nil
			case bool:
				return toInt(x), nil
			}
		}
		if u, ok := x.(Undefined); ok {
			return nil, newError(e.p, "%s", u.Hint)
		}
		return nil, newError(e.p, "bad operand type for unary %s: '%s'", e.op, typeName(x))
	case *binaryExpr:
		l, err := r.eval(e.l, f)
		if err != nil {
			return nil, err
		}
		switch e.op {
		case "and":
			if !truthy(l) {
				return l, nil
			}
			return r.eval(e.r, f)
		case "or":
			if truthy(l) {
				return l, nil
			}
			return r.eval(e.r, f)
		}
		rv, err := r.eval(e.r, f)
		if err != nil {
			return nil, err
		}
		v, err := binaryOp(e.op, l, rv)
		if err != nil {
			return nil, atPos(err, e.p)
		}
		return v, r.charge(v, e.p)
	case *compareExpr:
		x, err := r.eval(e.x, f)
		if err != nil {
			return nil, err
		}
		for i, op := range e.ops {
			y, err := r.eval(e.ys[i], f)
			if err != nil {
				return nil, err
			}
			ok, err := compareOp(op, x, y)
			if err != nil {
				return nil, atPos(err, e.p)
			}
			if !ok {
				return false, nil
			}
			x = y
		}
		return true, nil
	case *condExpr:
		c, err := r.eval(e.cond, f)
		if err != nil {
			return nil, err
		}
		if truthy(c) {
			return r.eval(e.yes, f)
		}
		if e.no == nil {
			return Undefined{"the inline if-expression evaluated to false and no else section was defined"}, nil
		}
		return r.eval(e.no, f)
	}
	return nil, fmt.Errorf("jinja: unknown expression %T", e)
}

func (r *renderer) evalSlice(e *sliceExpr, f *frame) (any, error) {
	obj, err := r.eval(e.obj, f)
	if err != nil {
		return nil, err
	}
	var idx [3]*int64
	for i, x := range []expr{e.start, e.stop, e.step} {
		if x == nil {
			continue
		}
		v, err := r.eval(x, f)
		if err != nil {
			return nil, err
		}
		switch v.(type) {
		case nil:
			continue
		case int64, bool:
			n := toInt(v)
			idx[i] = &n
		default:
			return nil, newError(x.exprPos(), "slice indices must be integers or None, not %s", typeName(v))
		}
	}
	v, err := slice(obj, idx[0], idx[1], idx[2])
	return v, atPos(err, e.p)
}

// slice is Python's obj[start:stop:step].
func slice(obj any, start, stop, step *int64) (any, error) {
	var n int
	var s []any
	var runes []rune
	switch x := obj.(type) {
	case []any:
		s, n = x, len(x)
	case Tuple:
		s, n = x, len(x)
	case string:
		runes = []rune(x)
		n = len(runes)
	case Undefined:
		return nil, errorf("%s", x.Hint)
	case *Map:
		return nil, errorf("unhashable type: 'slice'")
	default:
		// jinja2 compiles slices to plain Python subscripts, bypassing
		// the lenient getitem, so this is an error and not undefined.
		return nil, errorf("'%s' object is not subscriptable", typeName(obj))
	}
	st := int64(1)
	if step != nil {
		st = *step
	}
	if st == 0 {
		return nil, errorf("slice step cannot be zero")
	}
	// slice.indices()
	clamp := func(p *int64, def int64) int64 {
		if p == nil {
			return def
		}
		v := *p
		if v < 0 {
			v += int64(n)
			if v < 0 {
				if st < 0 {
					return -1
				}
				return 0
			}
		} else if v >= int64(n) {
			if st < 0 {
				return int64(n) - 1
			}
			return int64(n)
		}
		return v
	}
	var lo, hi int64
	if st > 0 {
		lo, hi = clamp(start, 0), clamp(stop, int64(n))
	} else {
		lo, hi = clamp(start, int64(n)-1), clamp(stop, -1)
	}
	var idx []int64
	if st > 0 {
		for i := lo; i < hi; i += st {
			idx = append(idx, i)
		}
	} else {
		for i := lo; i > hi; i += st {
			idx = append(idx, i)
		}
	}
	if runes != nil || n == 0 {
		if _, ok := obj.(string); ok {
			out := make([]rune, len(idx))
			for i, j := range idx {
				out[i] = runes[j]
			}
			return string(out), nil
		}
	}
	out := make([]any, len(idx))
	for i, j := range idx {
		out[i] = s[j]
	}
	if _, ok := obj.(Tuple); ok {
		return Tuple(out), nil
	}
	return out, nil
}

func binaryOp(op string, l, r any) (any, error) {
	if op == "~" {
		a, b := toStr(l), toStr(r)
		if len(a)+len(b) > maxOutput {
			return nil, errorf("string too long")
		}
		return a + b, nil
	}
	if s, ok := l.(string); ok && op == "%" {
		return percentFormat(s, r)
	}
	if u, ok := l.(Undefined); ok {
		return nil, errorf("%s", u.Hint)
	}
	if u, ok := r.(Undefined); ok {
		return nil, errorf("%s", u.Hint)
	}
	if isNumber(l) && isNumber(r) {
		return arith(op, l, r)
	}
	switch op {
	case "+":
		switch x := l.(type) {
		case string:
			if y, ok := r.(string); ok {
				if len(x)+len(y) > maxOutput {
					return nil, errorf("string too long")
				}
				return x + y, nil
			}
		case []any:
			if y, ok := r.([]any); ok {
				if len(x)+len(y) > maxSeqLen {
					return nil, errorf("list too long")
				}
				out := make([]any, 0, len(x)+len(y))
				return append(append(out, x...), y...), nil
			}
		case Tuple:
			if y, ok := r.(Tuple); ok {
				out := make(Tuple, 0, len(x)+len(y))
				return append(append(out, x...), y...), nil
			}
		}
	case "*":
		if isNumber(r) && !isFloat(r) {
			return repeat(l, toInt(r))
		}
		if isNumber(l) && !isFloat(l) {
			return repeat(r, toInt(l))
		}
	}
	return nil, errorf("unsupported operand type(s) for %s: '%s' and '%s'", op, typeName(l), typeName(r))
}

func repeat(v any, n int64) (any, error) {
	if n < 0 {
		n = 0
	}
	switch x := v.(type) {
	case string:
		if int64(len(x))*n > maxOutput {
			return nil, errorf("string repetition too long")
		}
		return strings.Repeat(x, int(n)), nil
	case []any:
		if int64(len(x))*n > maxSeqLen {
			return nil, errorf("list repetition too long")
		}
		out := []any{}
		for i := int64(0); i < n; i++ {
			out = append(out, x...)
		}
		return out, nil
	}
	return nil, errorf("can't multiply sequence of type '%s'", typeName(v))
}

func arith(op string, l, r any) (any, error) {
	_, lf := l.(float64)
	_, rf := r.(float64)
	if !lf && !rf && op != "/" {
		a, b := toInt(l), toInt(r)
		switch op {
		case "+":
			if c := a + b; (c > a) == (b > 0) {
				return c, nil
			}
			return nil, errorf("integer overflow in %d + %d", a, b)
		case "-":
			if c := a - b; (c < a) == (b > 0) {
				return c, nil
			}
			return nil, errorf("integer overflow in %d - %d", a, b)
		case "*":
			if c := a * b; a == 0 || c/a == b && !(a == -1 && b == math.MinInt64) && !(b == -1 && a == math.MinInt64) {
				return c, nil
			}
			return nil, errorf("integer overflow in %d * %d", a, b)
		case "//", "%":
			if b == 0 {
				return nil, errorf("integer division or modulo by zero")
			}
			q, m := a/b, a%b
			if m != 0 && (m < 0) != (b < 0) {
				q--
				m += b
			}
			if op == "//" {
				return q, nil
			}
			return m, nil
		case "**":
			if b < 0 {
				return math.Pow(float64(a), float64(b)), nil
			}
			res := int64(1)
			for ; b > 0; b-- {
				if a == 0 || a == 1 {
					res = a
					break
				}
				if a == -1 {
					if b%2 == 1 {
						res = -res
					}
					break
				}
				p := res * a
				if p/a != res {
					return nil, errorf("integer overflow in %d ** %d", toInt(l), toInt(r))
				}
				res = p
			}
			return res, nil
		}
	}
	a, b := toFloat(l), toFloat(r)
	switch op {
	case "+":
		return a + b, nil
	case "-":
		return a - b, nil
	case "*":
		return a * b, nil
	case "/":
		if b == 0 {
			return nil, errorf("division by zero")
		}
		return a / b, nil
	case "//":
		if b == 0 {
			return nil, errorf("float floor division by zero")
		}
		return math.Floor(a / b), nil
	case "%":
		if b == 0 {
			return nil, errorf("float modulo")
		}
		m := math.Mod(a, b)
		if m != 0 && (m < 0) != (b < 0) {
			m += b
		}
		return m, nil
	case "**":
		return math.Pow(a, b), nil
	}
	return nil, errorf("unknown operator %s", op)
}

func compareOp(op string, x, y any) (bool, error) {
	switch op {
	case "==":
		return equal(x, y), nil
	case "!=":
		return !equal(x, y), nil
	case "in":
		return contains(y, x)
	case "not in":
		ok, err := contains(y, x)
		return !ok, err
	}
	if u, ok := x.(Undefined); ok {
		return false, errorf("%s", u.Hint)
	}
	if u, ok := y.(Undefined); ok {
		return false, errorf("%s", u.Hint)
	}
	c, err := compare(x, y)
	if err != nil {
		return false, errorf("'%s' not supported between instances of '%s' and '%s'", op, typeName(x), typeName(y))
	}
	switch op {
	case "<":
		return c < 0, nil
	case "<=":
		return c <= 0, nil
	case ">":
		return c > 0, nil
	case ">=":
		return c >= 0, nil
	}
	return false, errorf("unknown comparison %s", op)
}

// contains is Python's `item in container`.
func contains(container, item any) (bool, error) {
	switch c := container.(type) {
	case string:
		s, ok := item.(string)
		if !ok {
			return false, errorf("'in <string>' requires string as left operand, not %s", typeName(item))
		}
		return strings.Contains(c, s), nil
	case []any:
		for _, e := range c {
			if equal(e, item) {
				return true, nil
			}
		}
		return false, nil
	case Tuple:
		for _, e := range c {
			if equal(e, item) {
				return true, nil
			}
		}
		return false, nil
	case *Map:
		if t, ok := item.(Tuple); ok {
			for _, e := range t {
				if !hashable(e) {
					return false, errorf("unhashable type: '%s'", typeName(e))
				}
			}
			return false, nil // keys from JSON and literals are never tuples
		}
		if !hashable(item) {
			return false, errorf("unhashable type: '%s'", typeName(item))
		}
		_, ok := c.Get(item)
		return ok, nil
	case Undefined:
		return false, nil
	}
	return false, errorf("argument of type '%s' is not iterable", typeName(container))
}

// iterate lists what `for x in v` visits.
func iterate(v any) ([]any, error) {
	switch x := v.(type) {
	case []any:
		return x, nil
	case Tuple:
		return x, nil
	case string:
		if len(x) > maxSeqLen {
			return nil, errorf("string of %d bytes is too long to iterate", len(x))
		}
		out := make([]any, 0, len(x))
		for _, r := range x {
			out = append(out, string(r))
		}
		return out, nil
	case *Map:
		return append([]any(nil), x.keys...), nil
	case Undefined:
		return nil, nil
	case *Namespace:
		return nil, errorf("'Namespace' object is not iterable")
	}
	return nil, errorf("'%s' object is not iterable", typeName(v))
}

func getItem(obj, key any) (any, error) {
	switch x := obj.(type) {
	case *Map:
		if v, ok := x.Get(key); ok {
			return v, nil
		}
		if s, ok := key.(string); ok {
			if m := method(obj, s); m != nil {
				return m, nil
			}
		}
		return Undefined{fmt.Sprintf("'dict object' has no attribute %s", repr(key))}, nil
	case []any, Tuple, string:
		i, ok := key.(int64)
		if b, isB := key.(bool); isB {
			i, ok = toInt(b), true
		}
		if !ok {
			if s, ok := key.(string); ok {
				return getAttr(obj, s)
			}
			return nil, errorf("%s indices must be integers, not %s", typeName(obj), typeName(key))
		}
		var n int
		switch y := x.(type) {
		case []any:
			n = len(y)
		case Tuple:
			n = len(y)
		case string:
			if i < 0 {
				i += int64(utf8.RuneCountInString(y))
			}
			if i >= 0 {
				for _, c := range y {
					if i == 0 {
						return string(c), nil
					}
					i--
				}
			}
			return Undefined{fmt.Sprintf("str object has no element %d", toInt(key))}, nil
		}
		if i < 0 {
			i += int64(n)
		}
		if i < 0 || i >= int64(n) {
			return Undefined{fmt.Sprintf("%s object has no element %d", typeName(obj), toInt(key))}, nil
		}
		if l, ok := x.([]any); ok {
			return l[i], nil
		}
		return x.(Tuple)[i], nil
	case *loopInfo, *Namespace:
		if s, ok := key.(string); ok {
			return getAttr(obj, s)
		}
	case Undefined:
		return nil, errorf("%s", x.Hint)
	case nil:
		return Undefined{fmt.Sprintf("'None' has no attribute %s", repr(key))}, nil
	}
	return Undefined{fmt.Sprintf("'%s object' has no attribute %s", typeName(obj), repr(key))}, nil
}

// getAttr is jinja2's obj.name: a Python attribute (a method) first, then
// the item obj["name"].
func getAttr(obj any, name string) (any, error) {
	switch x := obj.(type) {
	case Undefined:
		return nil, errorf("%s", x.Hint)
	case nil:
		return Undefined{fmt.Sprintf("'None' has no attribute '%s'", name)}, nil
	case *Namespace:
		if v, ok := x.m.Get(name); ok {
			return v, nil
		}
		return Undefined{fmt.Sprintf("'Namespace' object has no attribute '%s'", name)}, nil
	case *loopInfo:
		return x.attr(name), nil
	}
	if m := method(obj, name); m != nil {
		return m, nil
	}
	if x, ok := obj.(*Map); ok {
		if v, ok := x.Get(name); ok {
			return v, nil
		}
		return Undefined{fmt.Sprintf("'dict object' has no attribute '%s'", name)}, nil
	}
	return Undefined{fmt.Sprintf("'%s object' has no attribute '%s'", typeName(obj), name)}, nil
}

func (l *loopInfo) attr(name string) any {
	n := len(l.items)
	switch name {
	case "index":
		return int64(l.index0 + 1)
	case "index0":
		return int64(l.index0)
	case "revindex":
		return int64(n - l.index0)
	case "revindex0":
		return int64(n - l.index0 - 1)
	case "first":
		return l.index0 == 0
	case "last":
		return l.index0 == n-1
	case "length":
		return int64(n)
	case "depth":
		return int64(l.depth)
	case "depth0":
		return int64(l.depth - 1)
	case "previtem":
		if l.index0 == 0 {
			return Undefined{"there is no previous item"}
		}
		return l.items[l.index0-1]
	case "nextitem":
		if l.index0 == n-1 {
			return Undefined{"there is no next item"}
		}
		return l.items[l.index0+1]
	case "cycle":
		return Func(func(args []any, _ *Map) (any, error) {
			if len(args) == 0 {
				return nil, errorf("no items for cycling given")
			}
			return args[l.index0%len(args)], nil
		})
	}
	return Undefined{fmt.Sprintf("'LoopContext' object has no attribute '%s'", name)}
}
