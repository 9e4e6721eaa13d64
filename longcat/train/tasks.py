"""The three tasks a micro-batch trains, as LongCat-Video's pipeline runs them (`longcat.train.objective`);
plain names, importable where torch is not wanted (the report's rules)."""

TEXT_TO_VIDEO, IMAGE_TO_VIDEO, CONTINUATION = "text_to_video", "image_to_video", "continuation"
TASKS = (TEXT_TO_VIDEO, IMAGE_TO_VIDEO, CONTINUATION)
