package jinja

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// diffVars are the variables of the differential test, as JSON.
const diffVars = `{"s": "  Hi <x>\n", "t": "a,b,,c", "xs": [3, 1, 2], "ws": ["b", "A", "a"], "m": {"role": "user", "content": "hi", "n": 2},
 "msgs": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "n": 5, "f": 0.5, "z": 0, "e": "", "nil": null}`

var diffAtoms = []string{"0", "1", "-2", "2.5", "1.0", "'a'", "'Hello World'", "''", `"it's"`, "[]", "[1, 2, 3]", "['b', 'a']",
	"{'k': 1}", "none", "true", "false", "s", "t", "xs", "ws", "m", "msgs", "n", "f", "z", "e", "nil", "u", "(1, 'a')", "m.role", "msgs[0]"}

var diffUnary = []string{"not %s", "-%s", "(%s)"}

var diffBinary = []string{"%s + %s", "%s - %s", "%s * %s", "%s / %s", "%s // %s", "%s %% %s", "%s ** 2", "%s ~ %s", "%s == %s",
	"%s != %s", "%s < %s", "%s >= %s", "%s in %s", "%s not in %s", "%s and %s", "%s or %s", "(%s if %s else %s)"}

var diffPostfix = []string{"|length", "|string", "|tojson", "|first", "|last", "|join(',')", "|upper", "|trim", "|default('d')",
	"|default('d', true)", "|int", "|float", "|list", "|reverse|list", "|sort|list", "|unique|list", "|abs", "|round", "|round(1)",
	"|items|list", "|dictsort", "|indent(2)", "|e", "|title", "|capitalize", "|count", "|sum", "|min", "|max", "|select('odd')|list",
	"|map('string')|list", "|batch(2)|list", "|wordcount", "|tojson(indent=1)", "|selectattr('role')|list", "|map(attribute='role')|list",
	" is defined", " is none", " is string", " is number", " is integer", " is float", " is mapping", " is iterable", " is sequence",
	" is odd", " is even", " is true", " is boolean", " is lower", " is divisibleby 2", " is in [1, 'a']", " is not none",
	".upper()", ".split()", ".split(',')", ".strip()", ".lstrip('a ')", ".startswith('a')", ".endswith(('x', 'a'))", "[0]", "[-1]", "[1:]",
	"[::-1]", "[:-1]", ".items()|list", ".get('role')", ".role", ".keys()|list", ".values()|list", ".replace('a', 'b')", ".find('a')", ".title()",
	".capitalize()", ".rstrip()", ".rsplit(',', 1)", ".count('a')", ".content"}

func diffExpr(r *rand.Rand, depth int) string {
	if depth <= 0 || r.IntN(4) == 0 {
		return diffAtoms[r.IntN(len(diffAtoms))]
	}
	switch r.IntN(3) {
	case 0:
		return fmt.Sprintf(diffUnary[r.IntN(len(diffUnary))], diffExpr(r, depth-1))
	case 1:
		f := diffBinary[r.IntN(len(diffBinary))]
		args := make([]any, strings.Count(f, "%s"))
		for i := range args {
			args[i] = diffExpr(r, depth-1)
		}
		return fmt.Sprintf(f, args...)
	}
	x := diffExpr(r, depth-1)
	if !strings.HasPrefix(x, "(") && strings.ContainsAny(x, " ") {
		x = "(" + x + ")"
	}
	post := diffPostfix[r.IntN(len(diffPostfix))]
	// jinja2's optimizer folds constant expressions at compile time, and a
	// slice of a constant non-sequence then yields undefined instead of the
	// TypeError it raises at run time. Templates slice variables.
	for strings.Contains(post, ":") && strings.HasPrefix(post, "[") && !diffRefsVar(x) {
		post = diffPostfix[r.IntN(len(diffPostfix))]
	}
	return x + post
}

var diffVarRe = regexp.MustCompile(`\b(s|t|xs|ws|m|msgs|n|f|z|e|nil|u)\b`)
var diffStrRe = regexp.MustCompile(`'[^']*'|"[^"]*"`)

func diffRefsVar(x string) bool { return diffVarRe.MatchString(diffStrRe.ReplaceAllString(x, "")) }

// TestDifferentialPython renders random expressions over many value types,
// operators, filters, tests and methods with this package and with Python
// jinja2 (py_render.py), and requires the same output or a failure on both
// sides. It skips when no python3 with jinja2 is installed.
func TestDifferentialPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil || exec.Command(py, "-c", "import jinja2").Run() != nil {
		t.Skip("python3 with jinja2 not available")
	}
	n := 3000
	if testing.Short() {
		n = 300
	}
	r := rand.New(rand.NewPCG(1, 2))
	saved := engineCases
	defer func() { engineCases = saved }()
	engineCases = nil
	for i := 0; i < n; i++ {
		e := diffExpr(r, 3)
		engineCases = append(engineCases, engineCase{name: e, tmpl: "{{ " + e + " }}", vars: diffVars})
	}
	res := runOracle(t, py, "../testdata/chat/py_render.py")
	agree, bad := 0, 0
	for i, c := range engineCases {
		got, err := renderCase(t, c)
		want := res[i]
		switch {
		case err != nil && want.Error != nil, err == nil && want.Out != nil && got == *want.Out:
			agree++
			continue
		}
		bad++
		if bad > 40 {
			continue
		}
		w, _ := json.Marshal(want)
		t.Errorf("%s\n  go: %q err=%v\n  py: %s", c.tmpl, got, err, w)
	}
	t.Logf("%d of %d random expressions agree with Python jinja2", agree, len(engineCases))
}

var diffTexts = []string{"", " ", "  ", "\n", "\n\n", " \n  ", "\t", "a", " b ", "c\n", "\n  d", "x  \n  "}

func diffMarker(r *rand.Rand, plus bool) string {
	switch r.IntN(4) {
	case 0:
		return "-"
	case 1:
		if plus {
			return "+"
		}
	}
	return ""
}

// diffTemplate builds a random well-formed template mixing text with
// whitespace, print tags, blocks and comments with random '-'/'+' markers.
func diffTemplate(r *rand.Rand, depth int) string {
	var b strings.Builder
	for n := r.IntN(4) + 1; n > 0; n-- {
		b.WriteString(diffTexts[r.IntN(len(diffTexts))])
		open := func(body string) string {
			return "{%" + diffMarker(r, true) + " " + body + " " + diffMarker(r, true) + "%}"
		}
		switch k := r.IntN(6); {
		case k == 0 || depth <= 0:
			b.WriteString("{{" + diffMarker(r, false) + " n " + diffMarker(r, false) + "}}")
		case k == 1:
			b.WriteString(open("if n > 2") + diffTemplate(r, depth-1))
			if r.IntN(2) == 0 {
				b.WriteString(open("else") + diffTemplate(r, depth-1))
			}
			b.WriteString(open("endif"))
		case k == 2:
			b.WriteString(open("for i in xs") + diffTemplate(r, depth-1) + open("endfor"))
		case k == 3:
			b.WriteString("{#" + diffMarker(r, true) + " c " + diffMarker(r, false) + "#}")
		case k == 4:
			b.WriteString(open("set y = 1"))
		default:
			b.WriteString(open("raw") + diffTexts[r.IntN(len(diffTexts))] + "{{ n }}" + open("endraw"))
		}
	}
	b.WriteString(diffTexts[r.IntN(len(diffTexts))])
	return b.String()
}

// TestDifferentialWhitespacePython compares random templates built to
// exercise trim_blocks, lstrip_blocks and the '-'/'+' markers with Python
// jinja2. It skips when no python3 with jinja2 is installed.
func TestDifferentialWhitespacePython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil || exec.Command(py, "-c", "import jinja2").Run() != nil {
		t.Skip("python3 with jinja2 not available")
	}
	n := 2000
	if testing.Short() {
		n = 200
	}
	r := rand.New(rand.NewPCG(3, 4))
	saved := engineCases
	defer func() { engineCases = saved }()
	engineCases = nil
	for i := 0; i < n; i++ {
		engineCases = append(engineCases, engineCase{tmpl: diffTemplate(r, 2), vars: diffVars})
	}
	res := runOracle(t, py, "../testdata/chat/py_render.py")
	agree, bad := 0, 0
	for i, c := range engineCases {
		got, err := renderCase(t, c)
		want := res[i]
		if err != nil && want.Error != nil || err == nil && want.Out != nil && got == *want.Out {
			agree++
			continue
		}
		if bad++; bad <= 20 {
			w, _ := json.Marshal(want)
			t.Errorf("%q\n  go: %q err=%v\n  py: %s", c.tmpl, got, err, w)
		}
	}
	t.Logf("%d of %d random templates agree with Python jinja2", agree, len(engineCases))
}
