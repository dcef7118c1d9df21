mod redis_stream;
