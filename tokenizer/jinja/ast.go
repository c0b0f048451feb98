package jinja

// Statements.
type stmt interface{ stmtPos() pos }

type (
	textStmt   struct{ text string }
	outputStmt struct {
		p pos
		e expr
	}
	ifStmt struct {
		p      pos
		conds  []expr
		bodies [][]stmt // len(bodies) == len(conds) or len(conds)+1 with else
	}
	forStmt struct {
		p      pos
		target expr // nameExpr or tupleExpr of names
		iter   expr
		cond   expr // optional `if` filter
		body   []stmt
		els    []stmt
	}
	setStmt struct {
		p      pos
		target expr // nameExpr, tupleExpr or attrExpr (namespace)
		value  expr // nil for block set
		body   []stmt
		filter []*filterCall
	}
	macroStmt struct {
		p pos
		m *macroDef
	}
	callBlockStmt struct {
		p      pos
		call   *callExpr
		caller *macroDef
	}
	filterBlockStmt struct {
		p       pos
		filters []*filterCall
		body    []stmt
	}
	breakStmt    struct{ p pos }
	continueStmt struct{ p pos }
	blockStmt    struct {
		p    pos
		body []stmt
	}
)

func (s *textStmt) stmtPos() pos        { return pos{} }
func (s *outputStmt) stmtPos() pos      { return s.p }
func (s *ifStmt) stmtPos() pos          { return s.p }
func (s *forStmt) stmtPos() pos         { return s.p }
func (s *setStmt) stmtPos() pos         { return s.p }
func (s *macroStmt) stmtPos() pos       { return s.p }
func (s *callBlockStmt) stmtPos() pos   { return s.p }
func (s *filterBlockStmt) stmtPos() pos { return s.p }
func (s *breakStmt) stmtPos() pos       { return s.p }
func (s *continueStmt) stmtPos() pos    { return s.p }
func (s *blockStmt) stmtPos() pos       { return s.p }

type macroDef struct {
	name     string
	params   []string
	defaults []expr // aligned with params; nil when required
	body     []stmt
}

// Expressions.
type expr interface{ exprPos() pos }

type (
	constExpr struct {
		p pos
		v any
	}
	nameExpr struct {
		p    pos
		name string
	}
	listExpr struct {
		p     pos
		items []expr
	}
	tupleExpr struct {
		p     pos
		items []expr
	}
	dictExpr struct {
		p      pos
		keys   []expr
		values []expr
	}
	attrExpr struct {
		p    pos
		obj  expr
		name string
	}
	itemExpr struct {
		p   pos
		obj expr
		key expr
	}
	sliceExpr struct {
		p                 pos
		obj               expr
		start, stop, step expr // each may be nil
	}
	callExpr struct {
		p      pos
		fn     expr
		args   []expr
		kwargs []kwarg
	}
	filterExpr struct {
		p   pos
		obj expr
		f   *filterCall
	}
	testExpr struct {
		p      pos
		obj    expr
		name   string
		args   []expr
		negate bool
	}
	unaryExpr struct {
		p  pos
		op string // "not", "-", "+"
		x  expr
	}
	binaryExpr struct {
		p    pos
		op   string
		l, r expr
	}
	compareExpr struct {
		p   pos
		x   expr
		ops []string
		ys  []expr
	}
	condExpr struct {
		p             pos
		cond, yes, no expr // no may be nil
	}
)

type kwarg struct {
	name string
	v    expr
}

type filterCall struct {
	p      pos
	name   string
	args   []expr
	kwargs []kwarg
}

func (e *constExpr) exprPos() pos   { return e.p }
func (e *nameExpr) exprPos() pos    { return e.p }
func (e *listExpr) exprPos() pos    { return e.p }
func (e *tupleExpr) exprPos() pos   { return e.p }
func (e *dictExpr) exprPos() pos    { return e.p }
func (e *attrExpr) exprPos() pos    { return e.p }
func (e *itemExpr) exprPos() pos    { return e.p }
func (e *sliceExpr) exprPos() pos   { return e.p }
func (e *callExpr) exprPos() pos    { return e.p }
func (e *filterExpr) exprPos() pos  { return e.p }
func (e *testExpr) exprPos() pos    { return e.p }
func (e *unaryExpr) exprPos() pos   { return e.p }
func (e *binaryExpr) exprPos() pos  { return e.p }
func (e *compareExpr) exprPos() pos { return e.p }
func (e *condExpr) exprPos() pos    { return e.p }
