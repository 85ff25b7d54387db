package loop

// ReusedConns counts the connections of every loop of s that took the
// memory of an ended one (epoll_linux.go).
func (s *Server) ReusedConns() uint64 {
	var n uint64
	for _, el := range s.engine.loops {
		n += el.reused.Load()
	}
	return n
}
