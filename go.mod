module loopmx

go 1.26.8

require (
	github.com/rs/zerolog v1.35.1
	golang.org/x/sys v0.30.0
	gopkg.in/ini.v1 v1.68.0
)

require (
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
)
