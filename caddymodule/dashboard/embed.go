// Package dashboard holds the model router's live dashboard: one page and
// its script and style, embedded in the binary (no CDN: the page works
// offline) and served by the admin API at /model_router/dashboard. The
// charts are plain SVG drawn by the script; there is no third-party code.
package dashboard

import (
	"embed"
	"path"
)

//go:embed index.html app.js style.css
var files embed.FS

var types = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// Asset returns an embedded file by name (index.html, app.js, style.css)
// and its content type; ok is false for any other name.
func Asset(name string) (data []byte, contentType string, ok bool) {
	ctype, known := types[path.Ext(name)]
	if !known || path.Base(name) != name {
		return nil, "", false
	}
	data, err := files.ReadFile(name)
	if err != nil {
		return nil, "", false
	}
	return data, ctype, true
}
